"""Rotary position embeddings (RoPE) of the Llama-family decoders.

Notation: B rows, T tokens, H heads, D head dim.

Written here rather than taken from `transformers` because the decoder is the product: positions come per row
from the decoding session (left-padded prompts start at 0 in every row), and the same code runs in teacher
forcing, prefill and each compiled step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, float] | None = None) -> Tensor:
    """Inverse frequencies [D/2] of the rotation pairs; `scaling` = Llama 3's ("llama3" rope_type) parameters.

    Llama 3.1+ keeps high frequencies, divides low ones by `factor` and blends in between (its config's
    `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`).
    """
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # float32, as the checkpoints' own code
    if scaling is None:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > old / low, inv / factor, inv)  # long wavelengths: scaled down
    mid = (wavelen <= old / low) & (wavelen >= old / high)
    return torch.where(mid, blended, out)


class RotaryEmbedding(nn.Module):
    """positions [B, T] -> (cos, sin) [B, T, D], in float32 (rotations are applied in the queries' dtype)."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, float] | None = None) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(head_dim, theta, scaling), persistent=False)  # [D/2]

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)  # [B, T, D]: the two halves of a head rotate together
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate x [B, H, T, D] by (cos, sin) [B, T, D]; pairs are (i, i + D/2), as in Llama's checkpoints."""
    cos, sin = (t[:, None].to(x.dtype) for t in rope)  # [B, 1, T, D]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
