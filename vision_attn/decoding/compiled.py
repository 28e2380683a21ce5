"""The per-token decoding step, compiled for fixed shapes (CUDA graphs on a GPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vision_attn.decoding.session import DecodeBuffers

if TYPE_CHECKING:
    from vision_attn.models import VisionAttnModel
    from vision_attn.models.decoder import TextDecoder


def _step(decoder: TextDecoder, tokens: Tensor, buffers: DecodeBuffers) -> Tensor:
    return decoder.step(tokens, buffers)


class CompiledDecoder:
    """`TextDecoder.step` of one model compiled for fixed shapes; pass it to a `DecodingSession` (`compiled=`).

    On a GPU the step is compiled with mode="reduce-overhead", so each token replays one CUDA graph instead
    of launching some 20 kernels per decoder layer from Python; on CPU, torch.compile fuses it into a few
    C++ kernels. Its buffers (caches, image keys/values, masks) are kept per batch shape and reused call
    after call, since a CUDA graph reads fixed addresses. To keep the number of shapes (and compilations)
    small, the session pads the batch to a power of two and the caches' length is rounded up to one (at most
    `decoder.max_len`). Each new shape compiles once, in the first call that needs it (seconds to a minute);
    torch.compile serves up to its recompile limit of shapes (8 by default) and runs any further ones
    uncompiled. Build it after moving the model to its device. Maps always come from the uncompiled path.
    """

    def __init__(self, model: VisionAttnModel) -> None:
        self.decoder = model.decoder
        self.max_len = model.decoder.cfg.max_len
        mode = "reduce-overhead" if next(model.parameters()).is_cuda else "default"
        self._compiled = torch.compile(_step, mode=mode, fullgraph=True, dynamic=False)
        self._buffers: dict[tuple, DecodeBuffers] = {}

    def step(self, tokens: Tensor, buffers: DecodeBuffers) -> Tensor:
        """`TextDecoder.step`, compiled: next-token logits [R, V], copied out, since a CUDA graph overwrites its
        output at the next replay."""
        return self._compiled(self.decoder, tokens, buffers).clone()

    def buffers(self, length: int, image_kv: list[tuple[Tensor, Tensor]]) -> DecodeBuffers:
        """Buffers for caches of at least `length` slots, holding a copy of `image_kv` (per cross-attention layer
        2x[R, H, N, D])."""
        k = image_kv[0][0]
        L = min(1 << (length - 1).bit_length(), self.max_len)
        key = (*k.shape, L, k.dtype, k.device)
        if key not in self._buffers:
            own = [(k.clone(), v.clone()) for k, v in image_kv]
            buf = DecodeBuffers.allocate(self.decoder.cfg, L, own)
            for t in buf.tensors():
                torch._dynamo.mark_static_address(t)  # read in place by the CUDA graph, not copied in
            self._buffers[key] = buf
            return buf
        buf = self._buffers[key]
        for (k, v), (sk, sv) in zip(image_kv, buf.image_kv, strict=True):
            sk.copy_(k)
            sv.copy_(v)
        return buf
