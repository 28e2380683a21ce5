"""The self-attention KV cache of one decoder layer.

Notation: B rows (batch x beams), H heads, L cache slots, T tokens written at once, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Preallocated keys/values [B, H, L, D], written at slots and read whole.

    The slots to write come as a device tensor and `update` always returns the whole buffer; a key mask
    (kept by the decoding session, not the shape) says which slots hold tokens. Every decoding step therefore has
    the same shapes and reads the same addresses, which is what lets one compiled graph (a CUDA graph on a
    GPU) replay them all.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at slots [T] (long, on the cache's device); return the whole cache [B, H, L, D].

        A slot outside 0..L-1 is an error (IndexError on CPU, a device-side assert on a GPU); the session sizes
        the cache for the longest text first.
        """
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Make row i hold old row index[i] (beam search), in place: the buffers keep their addresses."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))
