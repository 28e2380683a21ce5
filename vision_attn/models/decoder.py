"""The text decoder: token + position embeddings, pre-norm blocks, tied LM head.

Notation: B batch (texts, or decoding rows), T text tokens, P prompt tokens, N image tokens, H heads, D head dim,
C width, V vocabulary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vision_attn.config import DecoderConfig
from vision_attn.layers import MLP, CrossAttention, KVCache, SelfAttention

if TYPE_CHECKING:
    from vision_attn.decoding.session import DecodeBuffers


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to image tokens, MLP; each pre-norm with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        image_kv: tuple[Tensor, Tensor],
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        slots: Tensor | None = None,
    ) -> Tensor:
        """x [B, T, C] -> [B, T, C]; mask, cache and slots as in `SelfAttention`."""
        x = x + self.drop(self.self_attn(self.norm1(x), mask, cache, slots))
        x = x + self.drop(self.cross_attn(self.norm2(x), image_kv))
        return x + self.mlp(self.norm3(x))


class TextDecoder(nn.Module):
    """Decoder-only language model conditioned on image tokens through cross-attention.

    `forward` is teacher forcing (training, scoring); `prefill` and `step` decode over a session's buffers
    (`decoding.session.DecodeBuffers`: caches, key mask, positions, write slot, image keys/values).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("decoder.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(
            DecoderBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 style: scale residual projections by depth
            for p in (block.self_attn.proj.weight, block.cross_attn.proj.weight, block.mlp.fc2.weight):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def image_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Image tokens [B, N, C] -> per layer keys/values 2x[B, H, N, D]."""
        return [block.cross_attn.image_kv(memory) for block in self.blocks]

    def forward(self, input_ids: Tensor, image_kv: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Teacher forcing: input_ids [B, T] (right-padded, positions 0..T-1) -> logits [B, T, V], causal."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"text of {T} tokens exceeds decoder.max_len={self.cfg.max_len}")
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)  # [B, T, C]
        for block, kv in zip(self.blocks, image_kv, strict=True):
            x = block(x, kv)
        return self.lm_head(self.norm(x))

    def prefill(self, input_ids: Tensor, buffers: DecodeBuffers) -> Tensor:
        """Left-padded prompts [B, P] into the caches at slots 0..P-1 -> next-token logits [B, V]."""
        positions, mask, slots = buffers.prompt_layout(input_ids.shape[1])  # [B, P], [B, 1, P, L], [P]
        return self._decode(self.tok_emb(input_ids) + self.pos_emb(positions), mask, slots, buffers)

    def step(self, tokens: Tensor, buffers: DecodeBuffers) -> Tensor:
        """One token per row, tokens [B], at the buffers' next slot -> next-token logits [B, V]. The same shapes
        at every step, so a compiled step replays one graph."""
        mask = buffers.open_slot()  # [B, 1, 1, L]
        x = self.tok_emb(tokens[:, None]) + self.pos_emb(buffers.next_pos[:, None])  # [B, 1, C]
        return self._decode(x, mask, buffers.slot, buffers)

    def _decode(self, x: Tensor, mask: Tensor, slots: Tensor, buffers: DecodeBuffers) -> Tensor:
        for block, kv, cache in zip(self.blocks, buffers.image_kv, buffers.caches, strict=True):
            x = block(x, kv, mask, cache, slots)
        return self.lm_head(self.norm(x[:, -1]))  # [B, V]
