"""Attention blocks of the text decoder and the KV cache they write to.

Notation: B batch, T text tokens (queries), S cached text tokens (keys), N image tokens, H heads,
D head dim, C = H * D model width.

Written by hand rather than taken from a library because they are the product: the decoder needs a
preallocated cache written at a position, image keys/values computed once per image and shared by all
texts (and beams) of that image, and masks for left-padded batched prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Preallocated self-attention keys/values for one layer, written at a position.

    Buffers are [B, H, L, D] with L the longest prompt + generated text; `update` writes T new
    positions starting at `pos` and returns views of everything written so far.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at positions pos..pos+T-1; return keys/values [B, H, pos+T, D]."""
        end = pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to position {end} but the cache holds {self.max_len}")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` [B'] of the batch (beam search reordering)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """Explicit softmax(q k^T / sqrt(D)) [B, H, T, S]; used only when attention maps are asked for."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if is_causal:
        t, s = scores.shape[-2:]
        causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        """x [B, T, C] -> [B, T, C].

        mask: bool [B, 1, T, S], True where a query may attend a key; None means plain causal over x.
        cache: when given, keys/values of x are written at `pos` and attention runs over the cache.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # 3x[B,H,T,D]
        if cache is not None:
            k, v = cache.update(k, v, pos)  # [B, H, S, D]
        drop = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # [B, T, C]


class CrossAttention(nn.Module):
    """Text queries attend to image tokens: q from text, one fused kv projection from the image."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def image_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Image tokens [B, N, C] -> keys, values [B, H, N, D]; computed once per image."""
        B, N, C = memory.shape
        k, v = self.kv(memory).view(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x [B, T, C], kv 2x[B, H, N, D] -> ([B, T, C], weights [B, H, T, N] or None)."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # [B, H, T, D]
        k, v = kv
        weights = None
        if need_weights:
            weights = attention_weights(q, k)  # [B, H, T, N]
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), weights
