"""The decoding session: everything one decode needs besides the weights, in one object.

Notation: B inputs, K rows per input (beams), R = B x K rows (plus padding rows of a compiled batch),
P prompt tokens (left-padded), L cache slots >= P + max_new_tokens, N image tokens, H heads, D head dim,
V vocabulary.

Every buffer has a fixed shape and address for the whole decode: the caches are read whole under a key mask,
the next token is written at one slot for every row, and beams are reordered in place. Each step is therefore
the same computation on new values, which is what a compiled step (`compiled.CompiledDecoder`) needs to replay
one CUDA graph per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vision_attn.layers import AttentionRecorder, KVCache

if TYPE_CHECKING:
    from vision_attn.config import DecoderConfig
    from vision_attn.decoding.compiled import CompiledDecoder
    from vision_attn.models import VisionAttnModel


@dataclass
class DecodeBuffers:
    """What a decoding step reads and writes besides the weights: the KV cache's rules in one place."""

    caches: list[KVCache]  # per block [R, KV, L, D]
    image_kv: list[tuple[Tensor, Tensor]]  # per cross-attention layer 2x[R, H, N, D]
    key_valid: Tensor  # [R, L] bool: cache slots that hold a (non-padding) token
    next_pos: Tensor  # [R] long: position of each row's next token
    slot: Tensor  # [1] long: cache slot of the next token (the same for every row)

    @classmethod
    def allocate(cls, cfg: DecoderConfig, length: int, image_kv: list[tuple[Tensor, Tensor]]) -> DecodeBuffers:
        """Caches of `length` slots, one per block of decoder `cfg`, for the rows of `image_kv` (per cross-attention
        layer 2x[R, H, N, D], kept as given)."""
        k0 = image_kv[0][0]
        R, device = k0.shape[0], k0.device
        kv_heads, head_dim = cfg.num_kv_heads or cfg.num_heads, cfg.dim // cfg.num_heads
        return cls(
            caches=[KVCache(R, kv_heads, length, head_dim, k0.dtype, device) for _ in range(cfg.depth)],
            image_kv=image_kv,
            key_valid=torch.zeros(R, length, dtype=torch.bool, device=device),
            next_pos=torch.zeros(R, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
        )

    def tensors(self) -> list[Tensor]:
        kv = [t for pair in self.image_kv for t in pair]
        return [t for c in self.caches for t in (c.k, c.v)] + kv + [self.key_valid, self.next_pos, self.slot]

    def start(self, prompt_valid: Tensor) -> None:
        """Begin a decode of left-padded prompts whose real tokens are prompt_valid [R, P] (bool)."""
        P = prompt_valid.shape[1]
        self.key_valid.zero_()
        self.key_valid[:, :P] = prompt_valid
        self.next_pos.copy_(prompt_valid.sum(-1))
        self.slot.fill_(P)

    def prompt_layout(self, P: int) -> tuple[Tensor, Tensor, Tensor]:
        """Positions [R, P], self-attention mask [R, 1, P, L] and cache slots [P] of the prompt tokens.

        Each prompt's real tokens get positions 0, 1, ...; a query sees the real keys up to itself; pad queries
        see only themselves, which keeps their softmax finite (their outputs are never used).
        """
        valid = self.key_valid[:, :P]
        device, L = valid.device, self.key_valid.shape[1]
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(P, L, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, L, dtype=torch.bool, device=device)
        mask = (causal & self.key_valid[:, None, None, :]) | eye
        return positions, mask, torch.arange(P, device=device)

    def open_slot(self) -> Tensor:
        """Mark the next slot as holding a token; return the step's key mask [R, 1, 1, L]."""
        self.key_valid.index_fill_(1, self.slot, True)
        return self.key_valid[:, None, None, :]

    def advance(self) -> None:
        self.slot.add_(1)
        self.next_pos.add_(1)

    def reorder(self, index: Tensor) -> None:
        """Make row i continue old row index[i], in place."""
        for c in self.caches:
            c.reorder(index)
        self.key_valid.copy_(self.key_valid.index_select(0, index))
        self.next_pos.copy_(self.next_pos.index_select(0, index))


class DecodingSession:
    """One decode of a batch of prompts about their images: `prefill`, then `step` per token, `reorder` for beams.

    Args:
        model: the captioner.
        images: [B_img, 3, H, W]; each is encoded once, and its keys/values shared by its rows.
        prompts: B token-id lists (left-padded here).
        max_new_tokens: tokens to make room for after the longest prompt.
        beams: rows per input (K); the rows of input i are i*K .. i*K+K-1 from the start.
        image_index: [B], the image of each prompt (default: prompt i uses image i).
        record_maps: keep, per row and generated token, the cross-attention weights of the query that predicted it
            (an `AttentionRecorder` on the cross-attention modules; off, only fused SDPA runs).
        compiled: step through this `CompiledDecoder` of `model`. It pads the inputs to a power of two with copies
            of input 0 (rows are independent, so padding changes no real row) so that a few shapes serve every
            batch size. Ignored with `record_maps`.
    """

    def __init__(
        self,
        model: VisionAttnModel,
        images: Tensor,
        prompts: list[list[int]],
        max_new_tokens: int,
        beams: int = 1,
        image_index: Tensor | None = None,
        record_maps: bool = False,
        compiled: CompiledDecoder | None = None,
    ) -> None:
        dec = model.decoder
        if image_index is None and len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        if not prompts or not all(prompts):
            raise ValueError("every prompt needs at least one token")
        P = max(len(p) for p in prompts)
        if P + max_new_tokens > dec.cfg.max_len:
            raise ValueError(
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds decoder.max_len={dec.cfg.max_len}"
            )
        compiled = None if record_maps else compiled
        self.model, self.max_new_tokens, self.beams, self.n_inputs = model, max_new_tokens, beams, len(prompts)
        self.eos, self.pad = model.config.eos_token_id, model.config.pad_token_id
        B = len(prompts)
        padded = B if compiled is None else 1 << (B - 1).bit_length()
        src = [i for i in range(B) for _ in range(beams)] + [0] * ((padded - B) * beams)  # the input of each row
        image_kv = dec.image_kv(model.encode(images))  # per layer 2x[B_img, H, N, D]
        if image_index is not None or len(src) != images.shape[0]:
            index = torch.tensor(src, device=images.device)
            index = index if image_index is None else image_index[index]
            image_kv = dec.select_images(image_kv, index)  # 2x[R, H, N, D]
        rows = [prompts[i] for i in src]
        # built as lists and copied once: a tensor write per prompt would be R small copies to a GPU
        device = images.device
        self.prompt_ids = torch.tensor([[self.pad] * (P - len(p)) + p for p in rows], device=device)  # [R, P]
        valid = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in rows], device=device)
        if compiled is None:  # what this batch needs: fewer keys than decoder.max_len cost less attention
            self.buffers = DecodeBuffers.allocate(dec.cfg, P + max_new_tokens, image_kv)
        else:  # the compiled step's buffers for this shape, reused call after call
            self.buffers = compiled.buffers(P + max_new_tokens, image_kv)
        self.buffers.start(valid)
        self._step = dec.step if compiled is None else compiled.step
        self.recorder = AttentionRecorder(dec.cross_attns) if record_maps else None
        # per row and generated token, each cross-attention layer's weights [R, max_new, layers, H, N]; reordered
        # with the caches,
        # so that a beam carries its own history
        self.maps: Tensor | None = None
        if record_maps:
            n_img, dtype = image_kv[0][0].shape[2], torch.promote_types(image_kv[0][0].dtype, torch.float32)
            self.maps = torch.zeros(
                len(rows), max_new_tokens, len(dec.cross_attns), dec.cfg.num_heads, n_img, dtype=dtype, device=device
            )
        self.n_maps = 0

    def prefill(self) -> Tensor:
        """Run the prompts (uncompiled: their length varies); return next-token logits [R, V]."""
        logits = self.model.decoder.prefill(self.prompt_ids, self.buffers)
        self._record()
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens [R] at the next position; return next-token logits [R, V]."""
        logits = self._step(tokens, self.buffers)
        self.buffers.advance()
        self._record()
        return logits

    def reorder(self, index: Tensor) -> None:
        """Make row i continue old row index[i] (beam search), in place."""
        self.buffers.reorder(index)
        if self.maps is not None:
            self.maps = self.maps.index_select(0, index)

    def _record(self) -> None:
        """Keep the last query's weights as the map of the token it predicts."""
        if self.recorder is not None and self.maps is not None:
            self.maps[:, self.n_maps] = torch.stack(self.recorder.last_query(), 1)  # [R, layers, H, N]
            self.n_maps += 1

    def token_maps(self, row: int, n: int) -> Tensor | None:
        """Maps of the first n generated tokens of `row` as [layers, H, n, N] (None if not recorded)."""
        return None if self.maps is None else self.maps[row, :n].permute(1, 2, 0, 3).clone()

    def close(self) -> None:
        """Detach the attention recorder (if any) from the model."""
        if self.recorder is not None:
            self.recorder.remove()

    def __enter__(self) -> DecodingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
