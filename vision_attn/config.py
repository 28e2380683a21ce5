"""Typed model configuration: the encoder, the decoder and the whole model.

These dataclasses are what `config.json` in an exported model folder holds, and what the Lightning CLI
exposes under `model.encoder.*` / `model.decoder.*`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class StackConfig:
    """The width and depth of a stack of transformer blocks: what the encoder and the decoder share.

    Args:
        dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `dim`.
    """

    dim: int = 192
    depth: int = 3
    num_heads: int = 3
    mlp_ratio: float = 4.0

    def check_heads(self, name: str) -> None:
        """Raise ValueError unless the width splits into whole heads (`name`: the config's key, for the message)."""
        if self.dim % self.num_heads:
            raise ValueError(f"{name}.dim={self.dim} must be divisible by {name}.num_heads={self.num_heads}")


@dataclass
class EncoderConfig(StackConfig):
    """The timm Vision Transformer that turns an image into patch tokens.

    Args:
        dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `dim`.
        image_size: input side in pixels (square).
        patch_size: patch side in pixels; the grid is (image_size / patch_size)^2 tokens.
        drop_path: stochastic depth rate (regularisation for small data).
        stem: "patch" = one linear projection per patch (standard ViT, needed for pretrained weights);
            "conv" = a small stack of strided 3x3 convolutions (learns much faster from scratch on small data).
        class_token: keep timm's class token (needed by most pretrained ViT weights). It is dropped
            from the tokens the decoder sees: the decoder attends to patches only.
        pretrained: optional local file (timm `.pth`/`.bin` or `.safetensors`) with ViT weights.
    """

    depth: int = 4
    image_size: int = 64
    patch_size: int = 8
    drop_path: float = 0.0
    stem: Literal["patch", "conv"] = "patch"
    class_token: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"encoder.image_size={self.image_size} must be a multiple of encoder.patch_size={self.patch_size}"
            )
        self.check_heads("encoder")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


@dataclass
class DecoderConfig(StackConfig):
    """The text decoder: pre-norm blocks of causal self-attention, cross-attention to patches, and MLP.

    Three families share one decoder. "base" (from scratch): LayerNorm, learned positions, GELU MLP, and
    cross-attention in every block. "gpt2" and "llama" are the layouts of those pretrained language models
    (GPT-2: LayerNorm, learned positions, GELU; Llama, SmolLM2, Qwen2: RMSNorm, rotary positions, SwiGLU,
    grouped-query attention), with a cross-attention sublayer behind a tanh gate that starts closed. Set
    `pretrained` to a local Hugging Face causal-LM folder and the family and every size below come from its
    `config.json` (`models.pretrained.lm_config`); only `max_len`, `dropout` and `cross_attn_every` stay yours.

    Args:
        dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `dim` (unless `mlp_dim` is set).
        vocab_size: set from the tokenizer (0 means "not yet known").
        max_len: longest prompt + generated text, in tokens (size of the position table and KV cache).
        dropout: dropout on residual branches.
        family: "base", "gpt2" or "llama" (see above).
        pretrained: a local Hugging Face causal-LM folder (`config.json`, `model.safetensors`, `tokenizer.json`)
            whose weights and tokenizer the decoder starts from.
        cross_attn_every: cross-attention in every k-th block (the last block always has one).
        num_kv_heads: key/value heads (grouped-query attention); None = num_heads.
        mlp_dim: MLP hidden width; None = dim * mlp_ratio.
        norm_eps: epsilon of the norms.
        rope_theta: base of the rotary frequencies (llama family).
        rope_scaling: Llama 3's rotary scaling parameters (llama family), or None.
        qkv_bias: bias on the query/key/value projection (llama family: Qwen2 has one, Llama does not).
        tie_embeddings: the LM head shares the token embedding matrix.
    """

    vocab_size: int = 0
    max_len: int = 64
    dropout: float = 0.0
    family: Literal["base", "gpt2", "llama"] = "base"
    pretrained: str | None = None
    cross_attn_every: int = 1
    num_kv_heads: int | None = None
    mlp_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    qkv_bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        self.check_heads("decoder")
        if self.dim % 4:
            raise ValueError(f"decoder.dim={self.dim} must be a multiple of 4 (2-D sin-cos positions of the patches)")
        if self.max_len < 16:
            raise ValueError(f"decoder.max_len={self.max_len} is too short; use at least 16")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"decoder.num_heads={self.num_heads} must be a multiple of decoder.num_kv_heads={self.num_kv_heads}"
            )
        if not 1 <= self.cross_attn_every <= self.depth:
            raise ValueError(f"decoder.cross_attn_every={self.cross_attn_every} must be in 1..depth ({self.depth})")

    @property
    def hidden_dim(self) -> int:
        """The MLP's hidden width."""
        return self.mlp_dim or int(self.dim * self.mlp_ratio)

    def has_cross_attn(self, block: int) -> bool:
        """Whether block `block` (0-based) attends to the image: every k-th, counted so that the last one does."""
        return (self.depth - 1 - block) % self.cross_attn_every == 0


@dataclass
class ModelConfig:
    """The whole model plus the special token ids generation needs."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = DecoderConfig(**self.decoder)
        if self.decoder.vocab_size and max(self.pad_token_id, self.bos_token_id, self.eos_token_id) >= (
            self.decoder.vocab_size
        ):
            raise ValueError("special token ids must be smaller than decoder.vocab_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)
