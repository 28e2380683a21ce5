"""Search over a decoding session: greedy, top-p sampling and beam search.

Notation: B inputs, K beams, R = B x K session rows, T generated tokens, V vocabulary.

Each function takes a started `DecodingSession` (whose rows per input match the search: 1 for greedy and
sampling, K for beam search) and returns one result per session input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vision_attn.decoding.session import DecodingSession

NEG_INF = float("-inf")


@dataclass
class GenerationOutput:
    """Per input: generated token ids (prompt and EOS excluded) and the sequence score.

    `scores` are summed log-probabilities (greedy/sampling) or length-normalised beam scores. Beam search
    also returns `hypotheses`: per input, up to K (tokens, summed log-probability with EOS) pairs, best
    length-normalised score first. With recorded maps, `attentions` holds per input the decoder's cross-attention
    weights [layers, H, T, N]: map t is what the query that predicted token t attended to (the Show-Attend-Tell
    alignment); each sums to 1 over N.
    """

    sequences: list[list[int]]
    scores: list[float]
    hypotheses: list[list[tuple[list[int], float]]] | None = None
    attentions: list[Tensor] | None = None

    def first(self, n: int) -> GenerationOutput:
        """The results of the first n inputs (a compiled session pads its batch)."""
        cut = lambda xs: None if xs is None else xs[:n]  # noqa: E731
        return GenerationOutput(self.sequences[:n], self.scores[:n], cut(self.hypotheses), cut(self.attentions))


def greedy(session: DecodingSession) -> GenerationOutput:
    """The most likely token at every step."""
    return _token_by_token(session, lambda logp: logp.argmax(-1))


def sample(
    session: DecodingSession, top_p: float = 1.0, temperature: float = 1.0, generator: torch.Generator | None = None
) -> GenerationOutput:
    """Nucleus sampling: each token from the smallest set whose probability reaches `top_p`, at `temperature`."""
    if not (0.0 < top_p <= 1.0 and temperature > 0):
        raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got top_p={top_p}, temperature={temperature}")

    def pick(logp: Tensor) -> Tensor:  # [R, V] -> [R]
        probs = (logp / temperature).softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)  # [R, 1]
        return order.gather(1, choice).squeeze(1)

    return _token_by_token(session, pick)


def _token_by_token(session: DecodingSession, pick: Callable[[Tensor], Tensor]) -> GenerationOutput:
    """One row per input; each row ends at its EOS (later tokens are padding) or after max_new_tokens."""
    if session.beams != 1:
        raise ValueError(f"greedy decoding and sampling take one row per input, the session has {session.beams}")
    eos, pad, max_new = session.eos, session.pad, session.max_new_tokens
    logits = session.prefill()
    R = logits.shape[0]
    finished = torch.zeros(R, dtype=torch.bool, device=logits.device)
    scores = torch.zeros(R, dtype=torch.float64, device=logits.device)
    out = []
    for t in range(max_new):
        logp = log_softmax(logits)  # [R, V]
        tok = pick(logp)
        scores += torch.where(finished, 0.0, logp.gather(1, tok[:, None]).squeeze(1))
        tok = torch.where(finished, pad, tok)
        out.append(tok)
        finished |= tok == eos
        if t == max_new - 1 or bool(finished.all()):
            break
        logits = session.step(tok)
    seqs = [until_eos(seq, eos) for seq in torch.stack(out, 1).tolist()]
    maps = None if session.maps is None else [session.token_maps(i, len(s)) for i, s in enumerate(seqs)]
    return GenerationOutput(seqs, scores.tolist(), attentions=maps)


def beam_search(session: DecodingSession, length_penalty: float = 1.0) -> GenerationOutput:
    """K = session.beams hypotheses per input, scored by summed log-probability / length ** length_penalty.

    A hypothesis ends at EOS; an input is done when K have ended and no live beam can beat the worst of them.
    """
    K, eos, max_new = session.beams, session.eos, session.max_new_tokens
    logits = session.prefill()  # [B*K, V]: the K rows of input b start identical
    B, V = logits.shape[0] // K, logits.shape[1]
    device = logits.device
    beam_scores = torch.full((B, K), NEG_INF, device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: let only the first expand at step 0
    seqs = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    # per input: (normalised score, tokens, logp, maps [layers, H, T, N] or None)
    finished: list[list[tuple[float, list[int], float, Tensor | None]]] = [[] for _ in range(B)]
    done = [False] * B
    n_cand = min(2 * K, K * V)
    next_beam = torch.zeros(B, K, dtype=torch.long, device=device)
    for t in range(max_new):
        logp = log_softmax(logits).view(B, K, V)
        top_scores, top_idx = (beam_scores[:, :, None] + logp).view(B, K * V).topk(n_cand, dim=-1)  # [B, 2K]
        top_scores_l, top_beam_l, top_tok_l = top_scores.tolist(), (top_idx // V).tolist(), (top_idx % V).tolist()
        # Python lists, made into tensors once per step (element-wise tensor writes cost ~B*K dispatches)
        next_beam_l = [[0] * K for _ in range(B)]
        next_tok_l = [[eos] * K for _ in range(B)]
        next_score_l = [[NEG_INF] * K for _ in range(B)]
        seqs_l = seqs.tolist()
        for b in range(B):
            if done[b]:
                continue
            n = 0
            for rank in range(n_cand):
                s, beam, tok = top_scores_l[b][rank], top_beam_l[b][rank], top_tok_l[b][rank]
                if s == NEG_INF:
                    break
                if tok == eos:
                    if rank < K:  # an EOS outside the top K would not have survived as a beam either
                        maps = session.token_maps(b * K + beam, t)  # rows still follow seqs here
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
                best_running == NEG_INF or best_running / (t + 1) ** length_penalty <= finished[b][-1][0]
            ):
                done[b] = True
        next_beam = torch.tensor(next_beam_l, dtype=torch.long, device=device)  # [B, K]
        next_tok = torch.tensor(next_tok_l, dtype=torch.long, device=device)
        beam_scores = torch.tensor(next_score_l, device=device)
        seqs = torch.cat(
            [seqs.gather(1, next_beam[:, :, None].expand(-1, -1, seqs.shape[2])), next_tok[:, :, None]], dim=2
        )
        if all(done) or t == max_new - 1:
            break
        session.reorder((torch.arange(B, device=device)[:, None] * K + next_beam).view(-1))
        logits = session.step(next_tok.view(-1))
    return _best_hypotheses(session, finished, done, seqs, beam_scores, next_beam, length_penalty)


def _best_hypotheses(
    session: DecodingSession,
    finished: list[list[tuple[float, list[int], float, Tensor | None]]],
    done: list[bool],
    seqs: Tensor,
    beam_scores: Tensor,
    next_beam: Tensor,
    length_penalty: float,
) -> GenerationOutput:
    """Inputs whose beams never all ended: their live beams compete with the finished ones, so EOS is optional."""
    K, eos = session.beams, session.eos
    n_gen = seqs.shape[2]
    seqs_l, scores_l = seqs.tolist(), beam_scores.tolist()
    out_seqs, out_scores, hyps, out_maps = [], [], [], []
    for b in range(len(finished)):
        pool = list(finished[b])
        if not done[b]:
            # the last step's reorder was skipped: live beam k still sits in row next_beam[b, k]
            rows = (b * K + next_beam[b]).tolist()
            for s, seq, r in zip(scores_l[b], seqs_l[b], rows, strict=True):
                if s != NEG_INF:
                    pool.append((s / n_gen**length_penalty, seq, s, session.token_maps(r, n_gen)))
        pool.sort(key=lambda x: -x[0])
        out_seqs.append(until_eos(pool[0][1], eos))
        out_scores.append(pool[0][0])
        maps = pool[0][3]
        out_maps.append(None if maps is None else maps[:, :, : len(out_seqs[-1])])
        hyps.append([(until_eos(seq, eos), raw) for _, seq, raw, _ in pool[:K]])
    return GenerationOutput(out_seqs, out_scores, hyps, None if session.maps is None else out_maps)


def until_eos(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos)] if eos in seq else seq


def log_softmax(logits: Tensor) -> Tensor:
    """Log-probabilities in at least float32 (bf16 logits are upcast; float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
