"""Attention blocks of the text decoder, and a recorder that reads the cross-attention weights.

Notation: B batch, T text tokens (queries), S keys (text tokens, or cache slots), N image tokens, H heads,
D head dim, C = H * D model width.

Written by hand rather than taken from a library because they are the product: the decoder needs a
preallocated cache written at slots, image keys/values computed once per image and shared by all texts (and
beams) of that image, masks for left-padded batched prompts, and the weights of every word's look at the image.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vision_attn.layers.kv_cache import KVCache


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """Explicit softmax(q k^T / sqrt(D)) [B, H, T, S]; used only when attention maps are asked for."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


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

    def queries(self, x: Tensor) -> Tensor:
        """Text tokens [B, T, C] -> queries [B, H, T, D]."""
        B, T, C = x.shape
        return self.q(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """x [B, T, C], kv 2x[B, H, N, D] -> [B, T, C]."""
        B, T, C = x.shape
        k, v = kv
        y = F.scaled_dot_product_attention(self.queries(x), k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class AttentionRecorder:
    """Reads the weights [B, H, T, N] of cross-attention modules as they run, without changing their forward.

    A forward hook on each module recomputes softmax(q k^T / sqrt(D)) from the module's own input and image keys
    (the probabilities its fused SDPA used, which SDPA does not return), as timm's `AttentionExtract` reads
    attention from outside the model. `weights[i]` holds module i's last call. The explicit softmax runs only
    while a recorder is attached; plain decoding never pays for it. Use as a context manager, or `remove()`.
    """

    def __init__(self, modules: Iterable[CrossAttention]) -> None:
        self.modules = list(modules)
        self.weights: list[Tensor | None] = [None] * len(self.modules)
        self._handles: list[RemovableHandle] = [
            m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)
        ]

    def _hook(self, i: int):
        def record(module: CrossAttention, args: tuple[Tensor, tuple[Tensor, Tensor]], _out: Tensor) -> None:
            x, (k, _v) = args
            self.weights[i] = attention_weights(module.queries(x), k)

        return record

    def last_query(self) -> list[Tensor]:
        """Per module, the weights of the last query of the last call: L x [B, H, N]."""
        if any(w is None for w in self.weights):
            raise RuntimeError("no cross-attention has run since the recorder was attached")
        return [w[:, :, -1] for w in self.weights]  # type: ignore[index]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> AttentionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
