"""Attention blocks of the text decoder, and a recorder that reads the cross-attention weights.

Notation: B batch, T text tokens (queries), S keys (text tokens, or cache slots), N image tokens, H heads,
KV key/value heads, D head dim, C = H * D model width.

Written by hand rather than taken from a library because they are the product: the decoder needs a
preallocated cache written at slots, image keys/values computed once per image and shared by all texts (and
beams) of that image, masks for left-padded batched prompts, and the weights of every word's look at the image.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vision_attn.layers.kv_cache import KVCache
from vision_attn.layers.positions import apply_rotary


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """Explicit softmax(q k^T / sqrt(D)) [B, H, T, S]; used only when attention maps are asked for."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with one fused qkv projection.

    Args:
        dim: model width C = H * D.
        num_heads: query heads H.
        num_kv_heads: key/value heads (grouped-query attention, Llama family); None = H.
        qkv_bias, proj_bias: biases of the qkv and output projections.
        dropout: attention and output dropout while training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads or num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, (num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=qkv_bias)  # [q; k; v]
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        slots: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x [B, T, C] -> [B, T, C].

        mask: bool [B, 1, T, S], True where a query may attend a key; None means plain causal over x.
        cache, slots: keys/values of x are written at cache slots [T] and attention runs over the whole cache
            (S = its length), so `mask` is then required.
        rope: (cos, sin) [B, T, D] of the tokens' positions (Llama family), or None (positions were added to x).
        """
        B, T, C = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * D, KV * D, KV * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k, v = (t.view(B, T, KV, D).transpose(1, 2) for t in (k, v))  # [B, KV, T, D]
        if rope is not None:
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        if cache is not None:
            if mask is None or slots is None:
                raise ValueError("attention over a KV cache needs the slots to write and a key mask")
            k, v = cache.update(k, v, slots)  # [B, KV, S, D]
        drop = self.dropout if self.training else 0.0
        gqa = KV != H  # each group of H / KV query heads shares a key/value head
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=drop, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, enable_gqa=gqa)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # [B, T, C]


class CrossAttention(nn.Module):
    """Text queries attend to image tokens: q from text, one fused kv projection from the image.

    Queries and keys are layer-normalised per head before their dot product (QK-norm, as in ViT-22B and timm's
    `qk_norm`). Why: with the small initialisation of a from-scratch decoder every logit starts near zero, so each
    word looks at the whole image evenly, and it stayed so for hundreds of steps: the decoder learnt late to find
    the object a word names. Normalised queries and keys give logits of order one from the first step.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.LayerNorm(head_dim)  # one norm shared by the heads, over each head's D channels
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def image_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Image tokens [B, N, C] -> keys, values [B, H, N, D]; computed once per image."""
        B, N, C = memory.shape
        k, v = self.kv(memory).view(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.k_norm(k), v

    def queries(self, x: Tensor) -> Tensor:
        """Text tokens [B, T, C] -> queries [B, H, T, D]."""
        B, T, C = x.shape
        return self.q_norm(self.q(x).view(B, T, self.num_heads, C // self.num_heads)).transpose(1, 2)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """x [B, T, C], kv 2x[B, H, N, D] -> [B, T, C]."""
        B, T, C = x.shape
        k, v = kv
        y = F.scaled_dot_product_attention(self.queries(x), k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TanhGate(nn.Module):
    """x -> tanh(alpha) * x with a scalar alpha initialised at 0 (Flamingo's gated cross-attention).

    Cross-attention inserted into a pretrained language model starts closed, so that before training the
    captioner's text logits are the language model's own; training opens it as far as the image helps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha.tanh().to(x.dtype) * x


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
