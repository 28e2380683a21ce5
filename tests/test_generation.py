"""Generation over the KV cache: cached == uncached, batch == members alone, EOS handling, beams, sampling."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from vision_attn.decoding import CompiledDecoder, DecodingSession, GenerationOutput
from vision_attn.models import VisionAttnModel
from vision_attn.tasks import GenerationConfig, generate, score_continuations

EOS = 2  # the tiny models use the default special ids (pad 0, bos 1, eos 2)
# prompts of different lengths, so batches are left-padded (1 token up to 6)
PROMPTS = [[1, 3], [1, 4, 7, 9, 11, 5], [1], [1, 4, 20, 5]]


def gen(
    model: VisionAttnModel,
    images: Tensor,
    prompts: list[list[int]],
    image_index: Tensor | None = None,
    compiled: CompiledDecoder | None = None,
    max_new_tokens: int = 32,
    **config,
) -> GenerationOutput:
    """`generate` with the decoding settings as keywords (those of `GenerationConfig`)."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, **config)
    return generate(model, images, prompts, cfg, image_index=image_index, compiled=compiled)


def eos_hook(
    model: VisionAttnModel, members: int, rule: Callable[[int, int], float]
) -> torch.utils.hooks.RemovableHandle:
    """Set the EOS logit of member b at decoder call c (0 = prefill) to rule(c, b).

    Rows of the logits are members, or K consecutive beams of each member in beam search, so member b owns
    rows b*k .. b*k + k - 1 with k = rows // members.
    """
    calls = {"n": 0}

    def hook(_mod: torch.nn.Module, _inp: tuple, out: Tensor) -> Tensor:
        c = calls["n"]
        calls["n"] += 1
        k = out.shape[0] // members
        out = out.clone()
        for b in range(members):
            out[b * k : (b + 1) * k, ..., EOS] = rule(c, b)
        return out

    return model.decoder.lm_head.register_forward_hook(hook)


def fixed_eos(model: VisionAttnModel, value: float = float("-inf")) -> torch.utils.hooks.RemovableHandle:
    """Set the EOS logit of every row of every call (generation and teacher forcing alike) to `value`; the default
    -inf means EOS is never chosen."""

    def hook(_mod: torch.nn.Module, _inp: tuple, out: Tensor) -> Tensor:
        out = out.clone()
        out[..., EOS] = value
        return out

    return model.decoder.lm_head.register_forward_hook(hook)


def teacher_forced_logp(model: VisionAttnModel, image: Tensor, prompt: list[int], seq: list[int]) -> Tensor:
    """log-probs of the next token after prompt + seq[:t], for t = 0..len(seq): [len(seq) + 1, V]."""
    with torch.inference_mode():
        logits = model(image[None], torch.tensor([prompt + seq]))[0]  # [T, V]
    return logits[len(prompt) - 1 :].double().log_softmax(-1)


# ---------------------------------------------------------------------------------------------- the fixture


def test_tiny_model_generates_varied_image_dependent_tokens(
    tiny_model: VisionAttnModel, make_model: Callable[..., VisionAttnModel], images: Tensor
) -> None:
    """Guards the fixture: with the library's small init every step would emit the same token."""
    with fixed_eos(tiny_model):
        out = gen(tiny_model, images, [[1, 3]] * 4, max_new_tokens=12)
    assert all(len(s) == 12 for s in out.sequences)
    assert len({tuple(s) for s in out.sequences}) >= 3  # the image changes the text
    assert all(len(set(s)) >= 3 for s in out.sequences)  # not one token repeated
    # for some seeds, some sequences stop at EOS and some do not
    lengths = [
        {len(s) for s in gen(make_model(seed=seed), images, PROMPTS, max_new_tokens=12).sequences} for seed in range(10)
    ]
    assert any(len(x) >= 2 for x in lengths)


# -------------------------------------------------------------------------------------- cached vs uncached


def cached_greedy(
    model: VisionAttnModel, images: Tensor, prompts: list[list[int]], steps: int
) -> tuple[Tensor, Tensor]:
    """Greedy decoding through a `DecodingSession` (no EOS stop): per-step logits [B, steps, V], tokens [B, steps]."""
    with torch.inference_mode():
        state = DecodingSession(model, images, prompts, steps)
        logits = state.prefill()
        all_logits, tokens = [], []
        for t in range(steps):
            all_logits.append(logits)
            tokens.append(logits.argmax(-1))
            if t < steps - 1:
                logits = state.step(tokens[-1])
    return torch.stack(all_logits, 1), torch.stack(tokens, 1)


def test_cached_logits_equal_uncached_logits(tiny_model: VisionAttnModel, images: Tensor) -> None:
    steps = 10
    cached, tokens = cached_greedy(tiny_model, images, PROMPTS, steps)
    for i, prompt in enumerate(PROMPTS):
        seq = tokens[i, :-1].tolist()
        with torch.inference_mode():
            full = tiny_model(images[i : i + 1], torch.tensor([prompt + seq]))[0]  # [T, V], no cache, no padding
        uncached = full[len(prompt) - 1 :]  # [steps, V]
        torch.testing.assert_close(cached[i], uncached, atol=1e-5, rtol=1e-5)
    assert cached.abs().max() > 1.0  # logits are not all tiny, so the tolerance means something


def test_greedy_tokens_equal_teacher_forced_argmax(tiny_model: VisionAttnModel, images: Tensor) -> None:
    max_new = 12
    out = gen(tiny_model, images, PROMPTS, max_new_tokens=max_new)
    assert any(len(s) < max_new for s in out.sequences) and any(len(s) >= 3 for s in out.sequences)
    for i, (prompt, seq) in enumerate(zip(PROMPTS, out.sequences, strict=True)):
        logp = teacher_forced_logp(tiny_model, images[i], prompt, seq)
        assert logp[: len(seq)].argmax(-1).tolist() == seq
        if len(seq) < max_new:  # it stopped: EOS was the argmax after the last token
            assert int(logp[len(seq)].argmax()) == EOS
        # the score is the summed log-prob of the generated tokens, EOS included when generated
        taken = seq + ([EOS] if len(seq) < max_new else [])
        expected = sum(float(logp[t, tok]) for t, tok in enumerate(taken))
        assert out.scores[i] == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------ batch vs one by one


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_equals_each_member_alone(make_model, images: Tensor, num_beams: int) -> None:
    model = make_model(dtype=torch.float64)
    images = images.double()
    batch = gen(model, images, PROMPTS, max_new_tokens=10, num_beams=num_beams)
    assert len({tuple(s) for s in batch.sequences}) == len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone = gen(model, images[i : i + 1], [prompt], max_new_tokens=10, num_beams=num_beams)
        assert batch.sequences[i] == alone.sequences[0]
        assert batch.scores[i] == pytest.approx(alone.scores[0], abs=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_image_index_equals_repeated_images(tiny_model: VisionAttnModel, images: Tensor, num_beams: int) -> None:
    index = torch.tensor([2, 0, 2, 1])
    shared = gen(tiny_model, images[:3], PROMPTS, image_index=index, max_new_tokens=8, num_beams=num_beams)
    repeated = gen(tiny_model, images[index], PROMPTS, max_new_tokens=8, num_beams=num_beams)
    assert shared.sequences == repeated.sequences
    assert shared.scores == pytest.approx(repeated.scores, abs=1e-5)
    # and the index is honoured: the default pairing (prompt i with image i) gives other texts
    other = gen(tiny_model, images[:4], PROMPTS, max_new_tokens=8, num_beams=num_beams)
    assert other.sequences != shared.sequences


# ---------------------------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("eos_logit", [float("-inf"), -1e9])
@pytest.mark.parametrize("num_beams", [1, 2, 3, 4])
def test_no_eos_runs_to_max_new_tokens(
    tiny_model: VisionAttnModel, images: Tensor, num_beams: int, eos_logit: float
) -> None:
    with fixed_eos(tiny_model, eos_logit):
        out = gen(tiny_model, images[:3], PROMPTS[:3], max_new_tokens=7, num_beams=num_beams)
    assert [len(s) for s in out.sequences] == [7, 7, 7]
    vocab = tiny_model.config.decoder.vocab_size
    assert all(0 <= tok < vocab and tok != EOS for s in out.sequences for tok in s)
    assert all(torch.isfinite(torch.tensor(out.scores)))


@pytest.mark.parametrize("forbid_eos", [False, True])
@pytest.mark.parametrize("num_beams", [7, 8, 12, 30])
def test_more_beams_than_vocabulary(make_model, make_config, images: Tensor, num_beams: int, forbid_eos: bool) -> None:
    model = make_model(make_config(vocab_size=8))
    hook = fixed_eos(model) if forbid_eos else None
    out = gen(model, images[:2], [[1, 3], [1, 4, 5]], max_new_tokens=5, num_beams=num_beams)
    if hook:
        hook.remove()
        assert [len(s) for s in out.sequences] == [5, 5]
    assert all(len(s) <= 5 and all(0 <= t < 8 and t != EOS for t in s) for s in out.sequences)
    assert all(torch.isfinite(torch.tensor(out.scores)))


def _exhaustive_best(
    model: VisionAttnModel, image: Tensor, prompt: list[int], max_new: int, vocab: int, length_penalty: float
) -> tuple[list[int], float]:
    """Best text by sum log-prob / length ** length_penalty (EOS counted in the length) among all texts."""
    best: tuple[float, list[int]] = (float("-inf"), [])
    tokens = [t for t in range(vocab) if t != EOS]
    for n in range(max_new + 1):
        for seq in itertools.product(tokens, repeat=n):
            logp = teacher_forced_logp(model, image, prompt, list(seq))
            total = sum(float(logp[t, tok]) for t, tok in enumerate(seq))
            length = n
            if n < max_new:  # ends with EOS
                total, length = total + float(logp[n, EOS]), n + 1
            best = max(best, (total / length**length_penalty, list(seq)))
    return best[1], best[0]


@pytest.mark.parametrize(
    "eos_bias,num_beams,length_penalty",
    [
        (None, 7, 1.0),  # no EOS: 7 beams hold every first token, so two steps are exhaustive
        (None, 64, 1.0),
        (4.0, 64, 1.0),  # EOS made likely: finished and running texts compete
        (4.0, 64, 0.0),
        (4.0, 64, 2.0),
    ],
)
def test_beam_search_with_enough_beams_is_exhaustive(
    make_model, make_config, images: Tensor, eos_bias: float | None, num_beams: int, length_penalty: float
) -> None:
    """With beams for every text, beam search must return the best length-normalised text of all."""
    vocab, max_new = 8, 2
    model = make_model(make_config(vocab_size=vocab), dtype=torch.float64)
    images = images.double()
    bias = torch.zeros(vocab, dtype=torch.float64)
    bias[EOS] = float("-inf") if eos_bias is None else eos_bias
    hook = model.decoder.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    prompts = [[1, 3], [1, 4, 5], [1], [1, 6]]
    out = gen(model, images, prompts, max_new_tokens=max_new, num_beams=num_beams, length_penalty=length_penalty)
    lengths = []
    for i, prompt in enumerate(prompts):
        seq, score = _exhaustive_best(model, images[i], prompt, max_new, vocab, length_penalty)
        assert out.sequences[i] == seq
        assert out.scores[i] == pytest.approx(score, abs=1e-5)
        lengths.append(len(seq))
    hook.remove()
    if eos_bias is not None:
        assert min(lengths) < max_new, "no finished text won: the case does not test finished hypotheses"


# ---------------------------------------------------------------------------------------------- EOS per member


@pytest.mark.parametrize("num_beams", [1, 3])
def test_eos_stops_only_its_member(tiny_model: VisionAttnModel, images: Tensor, num_beams: int) -> None:
    """Member 1 is forced to EOS from its third token on; the others can never end and must run on unchanged."""
    kw = {"max_new_tokens": 8, "num_beams": num_beams}
    with fixed_eos(tiny_model):
        free = gen(tiny_model, images[:3], PROMPTS[:3], **kw)
    with eos_hook(tiny_model, 3, lambda c, b: 1e4 if (b == 1 and c >= 2) else float("-inf")):
        forced = gen(tiny_model, images[:3], PROMPTS[:3], **kw)
    assert [len(s) for s in forced.sequences] == [8, 2, 8]
    assert forced.sequences[0] == free.sequences[0] and forced.sequences[2] == free.sequences[2]
    assert forced.scores[0] == pytest.approx(free.scores[0], abs=1e-5)
    # member 1 ends with the best 2-token text (its EOS costs ~0 log-prob), as if it had been cut at 2 tokens
    with fixed_eos(tiny_model):
        cut = gen(tiny_model, images[:3], PROMPTS[:3], max_new_tokens=2, num_beams=num_beams)
    assert forced.sequences[1] == cut.sequences[1]


# ------------------------------------------------------------------------------------------ lengths and limits


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("max_new", [1, 5])
def test_max_new_tokens_is_respected(tiny_model: VisionAttnModel, images: Tensor, max_new: int, num_beams: int) -> None:
    out = gen(tiny_model, images, PROMPTS, max_new_tokens=max_new, num_beams=num_beams)
    assert all(len(s) <= max_new for s in out.sequences)
    with fixed_eos(tiny_model):
        out = gen(tiny_model, images, PROMPTS, max_new_tokens=max_new, num_beams=num_beams)
    assert all(len(s) == max_new for s in out.sequences)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_prompt_plus_max_new_tokens_up_to_max_len(tiny_model: VisionAttnModel, images: Tensor, num_beams: int) -> None:
    prompt, max_len = [1, 4, 7, 5], tiny_model.config.decoder.max_len
    with fixed_eos(tiny_model):  # exactly max_len tokens in all: fits, and every position is used
        out = gen(tiny_model, images[:1], [prompt], max_new_tokens=max_len - 4, num_beams=num_beams)
    assert len(out.sequences[0]) == max_len - 4
    with pytest.raises(ValueError, match="max_len"):
        gen(tiny_model, images[:1], [prompt], max_new_tokens=max_len - 3, num_beams=num_beams)
    with pytest.raises(ValueError, match="max_len"):  # the longest prompt of a batch counts
        gen(tiny_model, images[:2], [[1], prompt], max_new_tokens=max_len - 3, num_beams=num_beams)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"do_sample": True, "top_p": 0.0}, "top_p"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_settings_raise(tiny_model: VisionAttnModel, images: Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gen(tiny_model, images[:1], [[1, 3]], **kwargs)


def test_bad_prompts_raise(tiny_model: VisionAttnModel, images: Tensor) -> None:
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        gen(tiny_model, images[:2], [[1, 3]])
    with pytest.raises(ValueError, match="at least one token"):
        gen(tiny_model, images[:2], [[1, 3], []])


# ---------------------------------------------------------------------------------------------- sampling


def _sample(model: VisionAttnModel, images: Tensor, seed: int, **kw) -> tuple[list[list[int]], list[float]]:
    out = gen(model, images, PROMPTS, max_new_tokens=8, do_sample=True, seed=seed, **kw)
    return out.sequences, out.scores


def test_sampling_is_reproducible_with_a_seed(tiny_model: VisionAttnModel, images: Tensor) -> None:
    (seqs, scores), (seqs2, scores2) = (
        _sample(tiny_model, images, 0, top_p=0.9),
        _sample(tiny_model, images, 0, top_p=0.9),
    )
    assert seqs == seqs2
    assert scores == pytest.approx(scores2, abs=1e-6)
    draws = {str(_sample(tiny_model, images, seed, top_p=0.9)[0]) for seed in range(5)}
    assert len(draws) >= 2  # the generator is really used


@pytest.mark.parametrize("kw", [{"top_p": 1e-6}, {"top_p": 1.0, "temperature": 1e-4}])
def test_tiny_top_p_or_temperature_equals_greedy(tiny_model: VisionAttnModel, images: Tensor, kw: dict) -> None:
    greedy = gen(tiny_model, images, PROMPTS, max_new_tokens=8)
    seqs, scores = _sample(tiny_model, images, 0, **kw)
    assert seqs == greedy.sequences
    assert scores == pytest.approx(greedy.scores, abs=1e-5)


def test_sampled_tokens_stay_in_the_nucleus(make_model, images: Tensor) -> None:
    model = make_model(dtype=torch.float64)
    images, top_p = images.double(), 0.6
    outside_greedy = 0
    with fixed_eos(model):  # the same distribution for sampling and for the teacher-forced check
        outs = [_sample(model, images, seed, top_p=top_p)[0] for seed in range(4)]
        for seqs in outs:
            for i, (prompt, seq) in enumerate(zip(PROMPTS, seqs, strict=True)):
                logp = teacher_forced_logp(model, images[i], prompt, seq)
                for t, tok in enumerate(seq):
                    p, order = logp[t].exp().sort(descending=True)
                    nucleus = order[(p.cumsum(0) - p) < top_p].tolist()
                    assert tok in nucleus
                    outside_greedy += tok != nucleus[0]
    assert outside_greedy > 0  # it really samples, not just argmax


def test_score_continuations_equals_the_generation_score(tiny_model: VisionAttnModel, images: Tensor) -> None:
    """The summed log-probability of a greedy text and its EOS, scored by teacher forcing, is its greedy score."""
    out = gen(tiny_model, images, PROMPTS, max_new_tokens=12)
    stopped = [i for i, s in enumerate(out.sequences) if len(s) < 12]
    assert stopped, "the fixture must stop at EOS for some prompts"
    conts = [out.sequences[i] + [EOS] for i in stopped]
    scores = score_continuations(tiny_model, images[stopped], [PROMPTS[i] for i in stopped], conts)
    assert scores.tolist() == pytest.approx([out.scores[i] for i in stopped], abs=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(tiny_model, images[:1], [PROMPTS[0]], [[]])


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_hypotheses_are_ranked_and_hold_the_best(
    tiny_model: VisionAttnModel, images: Tensor, length_penalty: float
) -> None:
    """Hypotheses come best length-normalised score first; each one's score is its teacher-forced log-probability
    (with its EOS when it ended before max_new_tokens), and the first is the returned sequence.

    EOS gets a fixed logit of 2.0, in generation and teacher forcing alike: near the tiny model's top logits, so that
    beams end at different lengths whatever the random weights (the last assertion checks that they do).
    """
    max_new = 6
    orders = set()
    with fixed_eos(tiny_model, 2.0):
        out = gen(tiny_model, images, PROMPTS, max_new_tokens=max_new, num_beams=4, length_penalty=length_penalty)
        assert out.hypotheses is not None
        for i, (seq, hyps) in enumerate(zip(out.sequences, out.hypotheses, strict=True)):
            assert 2 <= len(hyps) <= 4 and hyps[0][0] == seq
            normalised = []
            for tokens, logp in hyps:
                ended = len(tokens) < max_new
                tf = teacher_forced_logp(tiny_model, images[i], PROMPTS[i], tokens)
                expected = sum(float(tf[t, tok]) for t, tok in enumerate(tokens)) + (
                    float(tf[len(tokens), EOS]) if ended else 0
                )
                assert logp == pytest.approx(expected, abs=1e-4)
                normalised.append(logp / (len(tokens) + ended) ** length_penalty)
            assert normalised == sorted(normalised, reverse=True)  # best first
            orders.add(tuple(len(t) for t, _ in hyps))
    assert any(len(set(o)) > 1 for o in orders)  # hypotheses of different lengths compete: the order matters


# -------------------------------------------------------------------------------------- compiled decoding


def test_compiled_decoder_gives_the_tokens_of_eager_decoding(
    tiny_model: VisionAttnModel, images: Tensor, compiled_graphs: Callable[[], int]
) -> None:
    """torch.compile on CPU (CUDA graphs on a GPU): greedy and beams, left-padded prompts, batches padded to 4.

    The same decoder serves calls of different batch sizes, and a call after another of the same shape
    reuses the first one's buffers.
    """
    compiled = CompiledDecoder(tiny_model)
    index = torch.tensor([0, 1, 1, 2, 3])
    cases = [
        {"prompts": PROMPTS[:3], "num_beams": 1},  # 3 rows, padded to 4
        {"prompts": [PROMPTS[1], PROMPTS[0], PROMPTS[3]], "num_beams": 1},  # the same shape again
        {"prompts": PROMPTS + [PROMPTS[2]], "num_beams": 1, "image_index": index},  # 5 rows, padded to 8
        {"prompts": PROMPTS[:3], "num_beams": 3},  # 4 x 3 rows
    ]
    for case in cases:
        case = dict(case)
        n = len(case["prompts"])
        imgs = images if "image_index" in case else images[:n]
        kw = {"max_new_tokens": 10, "num_beams": case.pop("num_beams"), **case}
        eager = gen(tiny_model, imgs, **kw)
        fast = gen(tiny_model, imgs, compiled=compiled, **kw)
        assert fast.sequences == eager.sequences
        assert fast.scores == pytest.approx(eager.scores, abs=1e-4)
        assert len(fast.sequences) == n and any(len(s) >= 3 for s in fast.sequences)
    assert len(compiled._buffers) == 3  # rows 4, 8 and 12: the repeated shape reused its buffers
    assert compiled_graphs() == 3  # one graph per shape: compiled, not an eager fallback, and no recompile
