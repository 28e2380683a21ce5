"""Batched text generation over the KV cache: greedy, beam search and top-p sampling.

Notation: B batch, K beams, P prompt tokens (left-padded), L = P + max_new_tokens, N image tokens, V vocabulary.

Hand-written because decoding is the product: prompts of different lengths are left-padded and given
their own positions, so a batch gives the same result as each member alone; image keys/values are
computed once per image and shared by its beams; the cache is preallocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vision_attn.layers import KVCache

if TYPE_CHECKING:
    from vision_attn.models import VisionAttnModel
    from vision_attn.models.decoder import TextDecoder


@dataclass
class GenerationOutput:
    """Per input: generated token ids (prompt and EOS excluded) and the sequence score.

    `scores` are summed log-probabilities (greedy/sampling) or length-normalised beam scores. Beam search
    also returns `hypotheses`: per input, up to `num_beams` (tokens, summed log-probability with EOS) pairs,
    best length-normalised score first. With `return_attention`, `attentions` holds per input the decoder's
    cross-attention weights [L, H, T, N] (layers, heads, generated tokens, image tokens): map t is what the
    query that predicted token t attended to (the Show-Attend-Tell alignment); each sums to 1 over N.
    """

    sequences: list[list[int]]
    scores: list[float]
    hypotheses: list[list[tuple[list[int], float]]] | None = None
    attentions: list[Tensor] | None = None


class _DecodeState:
    """Caches, key-validity mask and next positions of a left-padded batch during decoding.

    Every buffer has a fixed shape and address for the whole decode (the cache is read whole, under a key
    mask; beams are reordered in place), so each step is the same computation on new values: what a
    compiled step (`CompiledDecoder`) needs to replay one CUDA graph per token.
    """

    def __init__(
        self,
        model: VisionAttnModel,
        image_kv: list[tuple[Tensor, Tensor]],
        prompts: list[list[int]],
        max_new_tokens: int,
        need_weights: bool = False,
        compiled: CompiledDecoder | None = None,
    ) -> None:
        dec = model.decoder
        device = image_kv[0][0].device
        B, P = len(prompts), max(len(p) for p in prompts)
        if P + max_new_tokens > dec.cfg.max_len:
            raise ValueError(
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds decoder.max_len={dec.cfg.max_len}"
            )
        if not all(prompts):
            raise ValueError("every prompt needs at least one token")
        # built as lists and copied once: a tensor write per prompt would be B (x beams) small copies to a GPU
        pad = model.config.pad_token_id
        ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts], dtype=torch.long, device=device)
        valid = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts], device=device)
        self.model, self.P, self.prompt_ids, self.prompt_valid = model, P, ids, valid
        heads, head_dim = dec.cfg.num_heads, dec.cfg.dim // dec.cfg.num_heads
        dtype = image_kv[0][0].dtype
        if compiled is None:
            # cache length: what this batch needs (shorter keys than decoder.max_len cost less attention)
            self.buffers = _Buffers.allocate(heads, P + max_new_tokens, head_dim, image_kv)
        else:  # the compiled step's buffers for this shape, reused call after call
            self.buffers = compiled.buffers(heads, P + max_new_tokens, head_dim, image_kv)
        buf = self.buffers
        buf.key_valid.zero_()
        buf.key_valid[:, :P] = valid
        buf.next_pos.copy_(valid.sum(-1))  # [B] position of the next token
        buf.slot.fill_(P)  # cache slot of the next token
        self.step_fn = _decode_step if compiled is None else compiled.step
        # Cross-attention maps of the queries that predicted each new token, [B, max_new, L, H, N]; rows are
        # reordered with the caches so that a beam carries its own history. None: SDPA only, nothing stored.
        self.maps: Tensor | None = None
        if need_weights:
            n_img, map_dtype = image_kv[0][0].shape[2], torch.promote_types(dtype, torch.float32)
            self.maps = torch.zeros(B, max_new_tokens, len(dec.blocks), heads, n_img, dtype=map_dtype, device=device)
        self.n_maps = 0

    def _store(self, weights: list[Tensor]) -> None:
        """Keep the last query's per-layer weights [B, H, T, N] as the map of the next token."""
        if self.maps is not None:
            self.maps[:, self.n_maps] = torch.stack([w[:, :, -1] for w in weights], 1)  # [B, L, H, N]
            self.n_maps += 1

    def prefill(self) -> Tensor:
        """Run the prompts (uncompiled: their length varies); return next-token logits [B, V]."""
        P, valid, buf = self.P, self.prompt_valid, self.buffers
        device = valid.device
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
        L = buf.key_valid.shape[1]
        causal = torch.ones(P, L, dtype=torch.bool, device=device).tril()  # [P, L]: keys beyond P never seen
        eye = torch.eye(P, L, dtype=torch.bool, device=device)
        # pad queries attend only to themselves, which keeps softmax finite; their outputs are never used
        mask = (causal & buf.key_valid[:, None, None, :]) | eye  # [B, 1, P, L]
        slots = torch.arange(P, device=device)
        need = self.maps is not None
        logits, w = self.model.decoder(self.prompt_ids, buf.image_kv, positions, mask, buf.caches, slots, need)
        self._store(w)
        return logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens [B] at the next position; return next-token logits [B, V]."""
        buf, need = self.buffers, self.maps is not None
        args = (buf.image_kv, buf.caches, buf.key_valid, buf.next_pos, buf.slot, need)
        logits, w = self.step_fn(self.model.decoder, tokens, *args)
        self._store(w)
        buf.slot.add_(1)
        buf.next_pos.add_(1)
        return logits

    def reorder(self, index: Tensor) -> None:
        """Make row i continue old row index[i] (beam search), in place."""
        buf = self.buffers
        for c in buf.caches:
            c.reorder(index)
        buf.key_valid.copy_(buf.key_valid.index_select(0, index))
        buf.next_pos.copy_(buf.next_pos.index_select(0, index))
        if self.maps is not None:
            self.maps = self.maps.index_select(0, index)

    def token_maps(self, row: int, n: int) -> Tensor | None:
        """Maps of the first n generated tokens of batch row `row` as [L, H, n, N] (None if not recorded)."""
        return None if self.maps is None else self.maps[row, :n].permute(1, 2, 0, 3).clone()


@dataclass
class _Buffers:
    """Everything a decoding step reads or writes besides the weights, at fixed shapes and addresses."""

    caches: list[KVCache]  # per layer [B, H, L, D]
    image_kv: list[tuple[Tensor, Tensor]]  # per layer 2x[B, H, N, D]
    key_valid: Tensor  # [B, L] bool: cache slots that hold a (non-padding) token
    next_pos: Tensor  # [B] long: position of each row's next token
    slot: Tensor  # [1] long: cache slot of the next token (the same for every row)

    @classmethod
    def allocate(cls, heads: int, L: int, head_dim: int, image_kv: list[tuple[Tensor, Tensor]]) -> _Buffers:
        """Caches of length L for the batch of `image_kv` (per layer 2x[B, H, N, D], kept as given)."""
        k0 = image_kv[0][0]
        B, device = k0.shape[0], k0.device
        return cls(
            caches=[KVCache(B, heads, L, head_dim, k0.dtype, device) for _ in image_kv],
            image_kv=image_kv,
            key_valid=torch.zeros(B, L, dtype=torch.bool, device=device),
            next_pos=torch.zeros(B, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
        )

    def tensors(self) -> list[Tensor]:
        kv = [t for pair in self.image_kv for t in pair]
        return [t for c in self.caches for t in (c.k, c.v)] + kv + [self.key_valid, self.next_pos, self.slot]


def _decode_step(
    decoder: TextDecoder,
    tokens: Tensor,
    image_kv: list[tuple[Tensor, Tensor]],
    caches: list[KVCache],
    key_valid: Tensor,
    next_pos: Tensor,
    slot: Tensor,
    need_weights: bool = False,
) -> tuple[Tensor, list[Tensor]]:
    """One token per row: tokens [B] at cache slot `slot` -> (next-token logits [B, V], per-layer
    cross-attention weights [B, H, 1, N] if `need_weights`). The same shapes at every step."""
    key_valid.index_fill_(1, slot, True)
    mask = key_valid[:, None, None, :]  # [B, 1, 1, L]
    logits, weights = decoder(tokens[:, None], image_kv, next_pos[:, None], mask, caches, slot, need_weights)
    return logits[:, -1], weights


class CompiledDecoder:
    """The per-token decoding step of one model, compiled for fixed shapes; pass it to `generate(compiled=...)`.

    On a GPU the step is compiled with mode="reduce-overhead", so each token replays one CUDA graph instead
    of launching some 20 kernels per decoder layer from Python; on CPU, torch.compile fuses it into a few
    C++ kernels. Its buffers (caches, image keys/values, masks) are kept per batch shape and reused call
    after call, since a CUDA graph reads fixed addresses. To keep the number of shapes (and compilations)
    small, `generate` pads the batch to a power of two and the caches' length is rounded up to one (at most
    `decoder.max_len`). Each new shape compiles once, in the first call that needs it (seconds to a minute);
    torch.compile serves up to its recompile limit of shapes (8 by default) and runs any further ones
    uncompiled. Build it after moving the model to its device. Maps (`return_attention`) always come from
    the uncompiled explicit-softmax path.
    """

    def __init__(self, model: VisionAttnModel) -> None:
        self.max_len = model.decoder.cfg.max_len
        cuda = next(model.parameters()).is_cuda
        mode = "reduce-overhead" if cuda else "default"
        self._step = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
        self._buffers: dict[tuple, _Buffers] = {}

    def step(self, *args: Any) -> tuple[Tensor, list[Tensor]]:
        """`_decode_step`, compiled; its logits are copied out, since a CUDA graph overwrites its output at the
        next replay."""
        logits, weights = self._step(*args)
        return logits.clone(), weights

    def buffers(self, heads: int, length: int, head_dim: int, image_kv: list[tuple[Tensor, Tensor]]) -> _Buffers:
        """Buffers for caches of at least `length` slots, holding a copy of `image_kv` (per layer 2x[B, H, N, D])."""
        k = image_kv[0][0]
        L = min(1 << (length - 1).bit_length(), self.max_len)
        key = (*k.shape, L, k.dtype, k.device)
        if key not in self._buffers:
            own = [(k.clone(), v.clone()) for k, v in image_kv]
            buf = _Buffers.allocate(heads, L, head_dim, own)
            for t in buf.tensors():
                torch._dynamo.mark_static_address(t)  # read in place by the CUDA graph, not copied in
            self._buffers[key] = buf
            return buf
        buf = self._buffers[key]
        for (k, v), (sk, sv) in zip(image_kv, buf.image_kv, strict=True):
            sk.copy_(k)
            sv.copy_(v)
        return buf


@torch.inference_mode()
def generate(
    model: VisionAttnModel,
    images: Tensor,
    prompts: list[list[int]],
    image_index: Tensor | None = None,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    length_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    return_attention: bool = False,
    compiled: CompiledDecoder | None = None,
) -> GenerationOutput:
    """Continue each prompt about its image until EOS or `max_new_tokens`.

    Args:
        images: [B_img, 3, H, W]; each is encoded once.
        prompts: B token-id lists (e.g. `<bos> <caption>` or `<bos> <vqa> question <answer>`).
        image_index: [B], the image of each prompt (default: prompt i uses image i).
        num_beams: 1 = greedy (or sampling with `do_sample`); >1 = beam search.
        top_p, temperature: nucleus sampling settings (only with `do_sample`).
        length_penalty: beam scores are sum log-prob / length ** length_penalty.
        return_attention: also return each output's cross-attention maps (`GenerationOutput.attentions`),
            computed by the explicit-softmax path; off, only SDPA runs and no map is kept.
        compiled: run each token through this `CompiledDecoder` of `model` (the same tokens, faster on a
            GPU); not used with `return_attention`.
    """
    if image_index is None and len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if do_sample and not (0.0 < top_p <= 1.0 and temperature > 0):
        raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got top_p={top_p}, temperature={temperature}")
    if return_attention:
        compiled = None
    B, K = len(prompts), num_beams
    # Decoding rows: the K beams of input i are rows i*K .. i*K+K-1 from the start (buffers never change
    # shape). A compiled decoder pads the inputs to a power of two with copies of input 0, so that a few
    # shapes serve every batch size; rows are independent, so padding changes no real row.
    padded = B if compiled is None else 1 << (B - 1).bit_length()
    src = [i for i in range(B) for _ in range(K)] + [0] * ((padded - B) * K)  # input of each row
    image_kv = model.decoder.image_kv(model.encode(images))  # per layer 2x[B_img, H, N, D]
    if image_index is not None or len(src) != B:
        index = torch.tensor(src, device=images.device)
        index = index if image_index is None else image_index[index]
        image_kv = [(k[index], v[index]) for k, v in image_kv]  # 2x[rows, H, N, D]
    state = _DecodeState(model, image_kv, [prompts[i] for i in src], max_new_tokens, return_attention, compiled)
    if num_beams == 1:
        out = _greedy_or_sample(state, max_new_tokens, do_sample, top_p, temperature, generator)
    else:
        out = _beam_search(state, max_new_tokens, num_beams, length_penalty)
    if padded == B:
        return out
    return GenerationOutput(
        out.sequences[:B],
        out.scores[:B],
        None if out.hypotheses is None else out.hypotheses[:B],
        None if out.attentions is None else out.attentions[:B],
    )


def _greedy_or_sample(
    state: _DecodeState,
    max_new: int,
    do_sample: bool,
    top_p: float,
    temperature: float,
    generator: torch.Generator | None,
) -> GenerationOutput:
    eos, pad = state.model.config.eos_token_id, state.model.config.pad_token_id
    logits = state.prefill()
    B = logits.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=logits.device)
    scores = torch.zeros(B, dtype=torch.float64, device=logits.device)
    out = []
    for t in range(max_new):
        logp = _log_softmax(logits)  # [B, V]
        tok = _sample_top_p(logp, top_p, temperature, generator) if do_sample else logp.argmax(-1)
        scores += torch.where(finished, 0.0, logp.gather(1, tok[:, None]).squeeze(1))
        tok = torch.where(finished, pad, tok)
        out.append(tok)
        finished |= tok == eos
        if t == max_new - 1 or bool(finished.all()):
            break
        logits = state.step(tok)
    seqs = [_until_eos(seq, eos) for seq in torch.stack(out, 1).tolist()]  # B lists of at most t tokens
    maps = None if state.maps is None else [state.token_maps(i, len(s)) for i, s in enumerate(seqs)]
    return GenerationOutput(seqs, scores.tolist(), attentions=maps)


def _sample_top_p(logp: Tensor, top_p: float, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample from the smallest set of tokens whose probability reaches top_p. logp [B, V] -> [B]."""
    probs = (logp / temperature).softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)  # [B, 1]
    return order.gather(1, choice).squeeze(1)


def _beam_search(state: _DecodeState, max_new: int, K: int, length_penalty: float) -> GenerationOutput:
    eos = state.model.config.eos_token_id
    logits = state.prefill()  # [B*K, V]: the K rows of input b (b*K .. b*K+K-1) start identical
    B, V = logits.shape[0] // K, logits.shape[1]
    device = logits.device
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: let only the first expand at step 0
    seqs = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    # per input: (normalised score, tokens, logp, maps [L, H, T, N] or None)
    finished: list[list[tuple[float, list[int], float, Tensor | None]]] = [[] for _ in range(B)]
    done = [False] * B
    n_cand = min(2 * K, K * V)
    for t in range(max_new):
        logp = _log_softmax(logits).view(B, K, V)
        cand = (beam_scores[:, :, None] + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(n_cand, dim=-1)  # [B, 2K]
        top_beam, top_tok = top_idx // V, top_idx % V
        top_scores_l, top_beam_l, top_tok_l = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
        # Python lists, made into tensors once per step (element-wise tensor writes cost ~B*K dispatches)
        next_beam_l = [[0] * K for _ in range(B)]
        next_tok_l = [[eos] * K for _ in range(B)]
        next_score_l = [[float("-inf")] * K for _ in range(B)]
        seqs_l = seqs.tolist()
        for b in range(B):
            if done[b]:
                continue
            n = 0
            for rank in range(n_cand):
                s, beam, tok = top_scores_l[b][rank], top_beam_l[b][rank], top_tok_l[b][rank]
                if s == float("-inf"):
                    break
                if tok == eos:
                    if rank < K:  # an EOS outside the top K would not have survived as a beam either
                        maps = state.token_maps(b * K + beam, t)  # rows still follow seqs here
                        finished[b].append((s / (t + 1) ** length_penalty, seqs_l[b][beam], s, maps))
                    continue
                next_beam_l[b][n], next_tok_l[b][n], next_score_l[b][n] = beam, tok, s
                n += 1
                if n == K:
                    break
            finished[b].sort(key=lambda x: -x[0])
            del finished[b][K:]
            best_running = next_score_l[b][0]
            if len(finished[b]) == K and (
                best_running == float("-inf") or best_running / (t + 1) ** length_penalty <= finished[b][-1][0]
            ):
                done[b] = True
        next_beam = torch.tensor(next_beam_l, dtype=torch.long, device=device)  # [B, K]
        next_tok = torch.tensor(next_tok_l, dtype=torch.long, device=device)
        next_score = torch.tensor(next_score_l, device=device)
        seqs = torch.cat(
            [seqs.gather(1, next_beam[:, :, None].expand(-1, -1, seqs.shape[2])), next_tok[:, :, None]], dim=2
        )
        beam_scores = next_score
        if all(done) or t == max_new - 1:
            break
        state.reorder((torch.arange(B, device=device)[:, None] * K + next_beam).view(-1))
        logits = state.step(next_tok.view(-1))
    # Inputs whose beams never all ended: the live beams compete with finished ones, so EOS is optional.
    n_gen = seqs.shape[2]
    seqs_l, scores_l = seqs.tolist(), beam_scores.tolist()
    out_seqs, out_scores, hyps, out_maps = [], [], [], []
    for b in range(B):
        pool = list(finished[b])
        if not done[b]:
            # the last step's reorder was skipped: live beam k still sits in row next_beam[b, k]
            rows = (b * K + next_beam[b]).tolist()
            for s, seq, r in zip(scores_l[b], seqs_l[b], rows, strict=True):
                if s != float("-inf"):
                    pool.append((s / n_gen**length_penalty, seq, s, state.token_maps(r, n_gen)))
        pool.sort(key=lambda x: -x[0])
        out_seqs.append(_until_eos(pool[0][1], eos))
        out_scores.append(pool[0][0])
        maps = pool[0][3]
        out_maps.append(None if maps is None else maps[:, :, : len(out_seqs[-1])])
        hyps.append([(_until_eos(seq, eos), raw) for _, seq, raw, _ in pool[:K]])
    return GenerationOutput(out_seqs, out_scores, hyps, None if state.maps is None else out_maps)


@torch.inference_mode()
def score_continuations(
    model: VisionAttnModel,
    images: Tensor,
    prompts: list[list[int]],
    continuations: list[list[int]],
    image_index: Tensor | None = None,
) -> Tensor:
    """Summed log-probability of each continuation (e.g. an answer's tokens + EOS) after its prompt: [B].

    One teacher-forced pass over right-padded prompt + continuation texts; padding sits after every scored
    token, so the causal mask keeps each row equal to scoring it alone.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    if any(not c for c in continuations):
        raise ValueError("every continuation needs at least one token")
    device = images.device
    texts = [p + c for p, c in zip(prompts, continuations, strict=True)]
    T = max(len(t) for t in texts)
    if T > model.decoder.cfg.max_len:
        raise ValueError(f"prompt + continuation of {T} tokens exceeds decoder.max_len={model.decoder.cfg.max_len}")
    ids = torch.full((len(texts), T), model.config.pad_token_id, dtype=torch.long, device=device)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = torch.tensor(t, device=device)
    logp = _log_softmax(model(images, ids, image_index))  # [B, T, V]
    out = torch.zeros(len(texts), dtype=logp.dtype, device=device)
    for i, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)  # positions predicting c
        out[i] = logp[i, pos, torch.tensor(c, device=device)].sum()
    return out


def _until_eos(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos)] if eos in seq else seq


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-probabilities in at least float32 (bf16 logits are upcast; float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
