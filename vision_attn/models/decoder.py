"""The text decoder: token + position embeddings, pre-norm blocks, tied LM head.

Notation: B batch (texts), T text tokens, N image tokens, H heads, D head dim, C width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vision_attn.config import DecoderConfig
from vision_attn.layers import MLP, CrossAttention, KVCache, SelfAttention


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
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x [B, T, C] -> ([B, T, C], cross-attention weights [B, H, T, N] or None)."""
        x = x + self.drop(self.self_attn(self.norm1(x), mask, cache, slots))
        y, weights = self.cross_attn(self.norm2(x), image_kv, need_weights)
        x = x + self.drop(y)
        x = x + self.mlp(self.norm3(x))
        return x, weights


class TextDecoder(nn.Module):
    """Decoder-only language model conditioned on image tokens through cross-attention."""

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

    def forward(
        self,
        input_ids: Tensor,
        image_kv: list[tuple[Tensor, Tensor]],
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        caches: list[KVCache] | None = None,
        slots: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """input_ids [B, T] -> (logits [B, T, V], per-layer cross-attention weights [B, H, T, N] if asked).

        positions [B, T]: position of each token (default: `slots`, else 0..T-1); left-padded prompts pass
            their own.
        mask [B, 1, T, S]: self-attention mask over the keys (None: causal over input_ids; required with caches).
        caches, slots: per-layer KV caches (each of length S), written at slots [T] (a device tensor, so
            that decoding steps differ in values, not shapes).
        """
        B, T = input_ids.shape
        if positions is None:
            if slots is None:
                if T > self.cfg.max_len:
                    raise ValueError(f"text of {T} tokens exceeds decoder.max_len={self.cfg.max_len}")
                slots = torch.arange(T, device=input_ids.device)
            positions = slots.expand(B, T)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)  # [B, T, C]
        maps = []
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            x, w = block(x, image_kv[i], mask, cache, slots if cache is not None else None, need_weights)
            if w is not None:
                maps.append(w)
        return self.lm_head(self.norm(x)), maps
