"""A prototype of fixed-shape greedy decoding for CUDA graphs; `generate_latency.py` measures it.

It lives here, not in `vision_attn/generation.py`, so that the numbers can say whether the change is worth making
there. What it changes relative to `vision_attn.generation.generate` (greedy):
  1. The KV cache is written at a position held in a device tensor (`index_copy_`) and always read whole,
     [B, H, L, D], with the key mask `arange(L) <= position`: every step has the same shapes, so one CUDA graph
     replays every step (`generate` slices the cache to the tokens written so far: a new shape each step).
  2. Image keys/values and the caches live in buffers at fixed addresses (`torch._dynamo.mark_static_address`),
     so the graph reads them in place instead of copying them in at each replay.
  3. The step (decoder + argmax) is compiled with mode="reduce-overhead": one graph launch per token instead of
     about 25 kernel launches per decoder layer. On CPU the same fixed shapes let torch.compile fuse the step
     into a few C++ kernels (no CUDA graphs there).
It keeps `generate`'s per-token "has every row ended?" check (a host sync), so both do the same host work.
Limits of the prototype: greedy only, one prompt shared by the whole batch (captions), no left padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vision_attn.layers import KVCache
from vision_attn.models import VisionAttnModel


class StaticKVCache(KVCache):
    """A KVCache written at `position` (a device tensor shared by all layers) and read whole: fixed shapes."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device, position: Tensor) -> None:
        super().__init__(batch, heads, max_len, head_dim, dtype, device)
        self.position = position  # [1] long

    def update(self, k: Tensor, v: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at position..position+T-1 (`pos` is unused); return the whole cache [B, H, L, D]."""
        index = self.position + torch.arange(k.shape[2], device=k.device)  # [T]
        self.k.index_copy_(2, index, k)
        self.v.index_copy_(2, index, v)
        return self.k, self.v


class StaticGreedy:
    """Greedy decoding of `max_new_tokens` after one shared prompt, for a fixed batch size.

    compile=True: the per-token step is compiled once for these shapes (on a GPU it replays as a CUDA graph).
    """

    def __init__(
        self, model: VisionAttnModel, batch: int, prompt: list[int], max_new_tokens: int, compile: bool
    ) -> None:
        dec, p = model.decoder, next(model.parameters())
        self.model, self.batch, self.prompt, self.max_new = model, batch, prompt, max_new_tokens
        L = len(prompt) + max_new_tokens
        if L > dec.cfg.max_len:
            raise ValueError(f"prompt + max_new_tokens = {L} exceeds decoder.max_len={dec.cfg.max_len}")
        heads, head_dim = dec.cfg.num_heads, dec.cfg.dim // dec.cfg.num_heads
        n_image = model.config.encoder.grid_size**2
        self.position = torch.zeros(1, dtype=torch.long, device=p.device)
        self.key_pos = torch.arange(L, device=p.device)  # [L]
        self.caches = [StaticKVCache(batch, heads, L, head_dim, p.dtype, p.device, self.position) for _ in dec.blocks]
        shape = (batch, heads, n_image, head_dim)
        self.image_kv = [(p.new_zeros(shape), p.new_zeros(shape)) for _ in dec.blocks]  # 2x[B, H, N, D] per layer
        if compile:
            buffers = (
                [self.position] + [t for c in self.caches for t in (c.k, c.v)] + [t for kv in self.image_kv for t in kv]
            )
            for t in buffers:
                torch._dynamo.mark_static_address(t)
            mode = "reduce-overhead" if p.is_cuda else "default"  # CUDA graphs on a GPU; fused C++ kernels on CPU
            self.step = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)
        else:
            self.step = self._step

    def _step(self, tok: Tensor) -> Tensor:
        """tok [B, 1] at `position` -> the next token [B, 1]."""
        mask = (self.key_pos <= self.position)[None, None, None, :]  # [1, 1, 1, L]
        positions = self.position.expand(self.batch, 1)  # [B, 1]
        logits, _ = self.model.decoder(tok, self.image_kv, positions=positions, mask=mask, caches=self.caches, pos=0)
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> list[list[int]]:
        """images [B, 3, H, W] -> B lists of generated token ids (EOS included if produced, then padding)."""
        model, dec = self.model, self.model.decoder
        for (k, v), (sk, sv) in zip(dec.image_kv(model.encode(images)), self.image_kv, strict=True):
            sk.copy_(k)
            sv.copy_(v)
        P = len(self.prompt)
        ids = torch.tensor(self.prompt, device=images.device).expand(self.batch, P)  # [B, P]
        causal = (self.key_pos[None, :] <= torch.arange(P, device=images.device)[:, None])[None, None]  # [1,1,P,L]
        self.position.zero_()
        logits, _ = dec(ids, self.image_kv, mask=causal, caches=self.caches, pos=0)
        tok = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        self.position.fill_(P)
        eos, pad = model.config.eos_token_id, model.config.pad_token_id
        finished = tok[:, 0] == eos
        out = [tok]
        for _ in range(self.max_new - 1):
            if bool(finished.all()):
                break
            tok = self.step(tok).clone()  # clone: a CUDA graph's output is overwritten by its next replay
            self.position.add_(1)
            tok = torch.where(finished[:, None], pad, tok)
            finished |= tok[:, 0] == eos
            out.append(tok)
        return torch.cat(out, 1).tolist()
