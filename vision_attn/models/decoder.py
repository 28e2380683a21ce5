"""The text decoder: token (+ learned position) embeddings, pre-norm blocks, LM head.

Notation: B batch (texts, or decoding rows), T text tokens, P prompt tokens, N image tokens, H heads, D head dim,
C width, V vocabulary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vision_attn.config import DecoderConfig
from vision_attn.layers import MLP, CrossAttention, KVCache, RotaryEmbedding, SelfAttention, SwiGLU, TanhGate

if TYPE_CHECKING:
    from vision_attn.decoding.session import DecodeBuffers

Rope = tuple[Tensor, Tensor] | None


def make_norm(cfg: DecoderConfig) -> nn.Module:
    """LayerNorm (base, GPT-2) or RMSNorm (Llama family)."""
    return nn.RMSNorm(cfg.dim, eps=cfg.norm_eps) if cfg.family == "llama" else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to image tokens (if this block has it), MLP; each pre-norm with a
    residual. In the pretrained families the cross-attention output passes a tanh gate that starts closed."""

    def __init__(self, cfg: DecoderConfig, cross_attn: bool) -> None:
        super().__init__()
        llama = cfg.family == "llama"
        self.norm1 = make_norm(cfg)
        self.self_attn = SelfAttention(
            cfg.dim,
            cfg.num_heads,
            cfg.dropout,
            cfg.num_kv_heads,
            qkv_bias=cfg.qkv_bias or not llama,
            proj_bias=not llama,
        )
        # the cross-attention sublayer: new parameters, never part of a pretrained language model
        self.norm2 = make_norm(cfg) if cross_attn else None
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.dropout) if cross_attn else None
        self.cross_gate = TanhGate() if cross_attn and cfg.family != "base" else nn.Identity()
        self.norm3 = make_norm(cfg)
        self.mlp = (SwiGLU if llama else MLP)(cfg.dim, cfg.hidden_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        image_kv: tuple[Tensor, Tensor] | None,
        rope: Rope = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        slots: Tensor | None = None,
    ) -> Tensor:
        """x [B, T, C] -> [B, T, C]; image_kv 2x[B, H, N, D] (None in a block without cross-attention); rope,
        mask, cache and slots as in `SelfAttention`."""
        x = x + self.drop(self.self_attn(self.norm1(x), mask, cache, slots, rope))
        if self.cross_attn is not None:
            x = x + self.cross_gate(self.drop(self.cross_attn(self.norm2(x), image_kv)))
        return x + self.mlp(self.norm3(x))


class TextDecoder(nn.Module):
    """Decoder-only language model conditioned on image tokens through cross-attention.

    `forward` is teacher forcing (training, scoring); `prefill` and `step` decode over a session's buffers
    (`decoding.session.DecodeBuffers`: caches, key mask, positions, write slot, image keys/values). Image
    keys/values are lists over the blocks that have cross-attention (`cross_attns`), in block order.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("decoder.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        # learned positions (base, GPT-2) or rotary ones (Llama family): one of the two is None
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim) if cfg.family != "llama" else None
        head_dim = cfg.dim // cfg.num_heads
        self.rope = RotaryEmbedding(head_dim, cfg.rope_theta, cfg.rope_scaling) if cfg.family == "llama" else None
        self.blocks = nn.ModuleList(DecoderBlock(cfg, cfg.has_cross_attn(i)) for i in range(cfg.depth))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 style: scale residual projections by depth
            cross = [block.cross_attn.proj] if block.cross_attn is not None else []
            for p in (m.weight for m in [block.self_attn.proj, *cross, block.mlp.fc2]):  # this order: the same init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def cross_attns(self) -> list[CrossAttention]:
        """The cross-attention modules, in block order: what image keys/values and attention maps are per."""
        return [b.cross_attn for b in self.blocks if b.cross_attn is not None]

    def image_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Image tokens [B, N, C] -> per cross-attention layer keys/values 2x[B, H, N, D]."""
        return [attn.image_kv(memory) for attn in self.cross_attns]

    @staticmethod
    def select_images(image_kv: list[tuple[Tensor, Tensor]], index: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer keys/values 2x[B, H, N, D] -> 2x[M, H, N, D]: row i holds image index[i]'s.

        index_select, not k[index]: its backward is a scatter-add, many times faster on the CPU than advanced
        indexing's accumulating index_put (training gathers for every text of a batch).
        """
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in image_kv]

    def embed(self, input_ids: Tensor, positions: Tensor) -> tuple[Tensor, Rope]:
        """ids, positions [B, T] -> token vectors [B, T, C] (with learned positions added) and the rotary (cos, sin)."""
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        return x, (self.rope(positions) if self.rope is not None else None)

    def forward(self, input_ids: Tensor, image_kv: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Teacher forcing: input_ids [B, T] (right-padded, positions 0..T-1) -> logits [B, T, V], causal."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"text of {T} tokens exceeds decoder.max_len={self.cfg.max_len}")
        x, rope = self.embed(input_ids, torch.arange(T, device=input_ids.device).expand(B, T))  # [B, T, C]
        kv = iter(image_kv)
        for block in self.blocks:
            x = block(x, next(kv) if block.cross_attn is not None else None, rope)
        return self.lm_head(self.norm(x))

    def prefill(self, input_ids: Tensor, buffers: DecodeBuffers) -> Tensor:
        """Left-padded prompts [B, P] into the caches at slots 0..P-1 -> next-token logits [B, V]."""
        positions, mask, slots = buffers.prompt_layout(input_ids.shape[1])  # [B, P], [B, 1, P, L], [P]
        return self._decode(*self.embed(input_ids, positions), mask, slots, buffers)

    def step(self, tokens: Tensor, buffers: DecodeBuffers) -> Tensor:
        """One token per row, tokens [B], at the buffers' next slot -> next-token logits [B, V]. The same shapes
        at every step, so a compiled step replays one graph."""
        mask = buffers.open_slot()  # [B, 1, 1, L]
        x, rope = self.embed(tokens[:, None], buffers.next_pos[:, None])  # [B, 1, C]
        return self._decode(x, rope, mask, buffers.slot, buffers)

    def _decode(self, x: Tensor, rope: Rope, mask: Tensor, slots: Tensor, buffers: DecodeBuffers) -> Tensor:
        kv = iter(buffers.image_kv)
        for block, cache in zip(self.blocks, buffers.caches, strict=True):
            x = block(x, next(kv) if block.cross_attn is not None else None, rope, mask, cache, slots)
        return self.lm_head(self.norm(x[:, -1]))  # [B, V]
