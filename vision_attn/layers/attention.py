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
    """Preallocated self-attention keys/values [B, H, L, D] for one layer, written at slots and read whole.

    The slots to write come as a device tensor and `update` always returns the whole buffer; a key mask
    (not the shape) says which slots hold tokens. Every decoding step therefore has the same shapes and
    reads the same addresses, which is what lets one compiled graph (a CUDA graph on a GPU) replay them all.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at slots [T] (long, on the cache's device); return the whole cache [B, H, L, D].

        A slot outside 0..L-1 is an error (IndexError on CPU, a device-side assert on a GPU); callers size
        the cache for the longest text first.
        """
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Make row i hold old row index[i] (beam search), in place: the buffers keep their addresses."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))


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

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None, slots: Tensor | None = None
    ) -> Tensor:
        """x [B, T, C] -> [B, T, C].

        mask: bool [B, 1, T, S], True where a query may attend a key; None means plain causal over x.
        cache, slots: keys/values of x are written at cache slots [T] and attention runs over the whole cache
            (S = its length), so `mask` is then required.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # 3x[B,H,T,D]
        if cache is not None:
            if mask is None or slots is None:
                raise ValueError("attention over a KV cache needs the slots to write and a key mask")
            k, v = cache.update(k, v, slots)  # [B, H, S, D]
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
