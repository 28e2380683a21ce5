"""The models compared: the sizes, our model at a size, the Hugging Face peer, and the FLOP formula.

The peer is `transformers.VisionEncoderDecoderModel` built from config (random init, nothing downloaded): a HF
ViT encoder and a GPT-2 decoder with cross-attention in every layer, SDPA attention in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig

PROMPT = [1, 3]  # <bos> <caption>: the caption prompt of vision-attn's tokenizer (ids 1 and 3)


@dataclass(frozen=True)
class Size:
    """One workload size, shared by ours and the peer."""

    name: str
    image_size: int
    patch_size: int
    enc_dim: int
    enc_depth: int
    enc_heads: int
    stem: str  # ours only: "conv" (demo) or "patch"; the HF ViT always has a patch projection
    class_token: bool
    dec_dim: int
    dec_depth: int
    dec_heads: int
    vocab_size: int
    max_len: int = 64

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES = {
    # configs/demo.yaml (vocabulary of the demo tokenizer, runs/demo/model)
    "demo": Size("demo", 128, 16, 128, 4, 4, "conv", False, 128, 3, 4, 423),
    # the workload: ViT-B/16 at 224 + 12-layer 768-wide decoder, vocabulary 32,000
    "vit_b16": Size("vit_b16", 224, 16, 768, 12, 12, "patch", True, 768, 12, 12, 32000),
}


def ours_config(size: Size) -> ModelConfig:
    """Our model at `size`, no dropout or drop-path (the peer is built without them too)."""

    def stack(dim: int, depth: int, heads: int) -> dict[str, int]:
        return {"dim": dim, "depth": depth, "num_heads": heads}

    image = {"image_size": size.image_size, "patch_size": size.patch_size, "stem": size.stem}
    encoder = EncoderConfig(
        class_token=size.class_token, **image, **stack(size.enc_dim, size.enc_depth, size.enc_heads)
    )
    decoder = DecoderConfig(
        vocab_size=size.vocab_size, max_len=size.max_len, **stack(size.dec_dim, size.dec_depth, size.dec_heads)
    )
    return ModelConfig(encoder, decoder)


def build_peer(size: Size) -> torch.nn.Module:
    """HF VisionEncoderDecoderModel (ViT + GPT-2 with cross-attention) at `size`, random init, SDPA, no dropout."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    enc = ViTConfig(image_size=size.image_size, patch_size=size.patch_size, hidden_size=size.enc_dim,
                    num_hidden_layers=size.enc_depth, num_attention_heads=size.enc_heads,
                    intermediate_size=4 * size.enc_dim, **no_dropout)  # fmt: skip
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    dec = GPT2Config(vocab_size=size.vocab_size, n_positions=size.max_len, n_embd=size.dec_dim,
                     n_layer=size.dec_depth, n_head=size.dec_heads, add_cross_attention=True, is_decoder=True,
                     **no_dropout, **special)  # fmt: skip
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    model = VisionEncoderDecoderModel(config=cfg)
    impl = (model.config.encoder._attn_implementation, model.config.decoder._attn_implementation)
    if impl != ("sdpa", "sdpa"):
        raise RuntimeError(f"the peer should use SDPA attention, got {impl}; check the transformers version")
    return model


def forward_flops(size: Size, text_len: int, memory_tokens: int) -> dict[str, float]:
    """Matmul FLOPs of one image's forward pass (2 per multiply-add); training counts 3x this.

    With N encoder tokens (patches + class token) of width D, T text tokens and M image tokens the decoder
    attends to (ours: the patches; the peer: every encoder token), decoder width C, vocabulary V:
        encoder, per layer:  24*N*D^2 (qkv, proj, 4x MLP) + 4*N^2*D (scores and weighted sum)
        patch projection:    2*P*(3*p^2)*D (P patches of p x p pixels; our demo's conv stem is counted as this)
        decoder, per layer:  self-attention 8*T*C^2 + 4*T^2*C; cross-attention 4*T*C^2 (q, proj)
                             + 4*M*C^2 (k, v of the image tokens) + 4*T*M*C; MLP 16*T*C^2
        LM head:             2*T*C*V
    Causal masking is not discounted (the usual convention); norms, softmax and elementwise work are left out.
    """
    P = size.num_patches
    N, D = P + int(size.class_token), size.enc_dim
    T, M, C, V = text_len, memory_tokens, size.dec_dim, size.vocab_size
    enc = size.enc_depth * (24 * N * D**2 + 4 * N**2 * D) + 2 * P * 3 * size.patch_size**2 * D
    dec_layer = 8 * T * C**2 + 4 * T**2 * C + 4 * T * C**2 + 4 * M * C**2 + 4 * T * M * C + 16 * T * C**2
    dec = size.dec_depth * dec_layer
    head = 2 * T * C * V
    return {"encoder": float(enc), "decoder": float(dec), "lm_head": float(head), "total": float(enc + dec + head)}
