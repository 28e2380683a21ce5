"""Attention maps: explicit path == SDPA path, beams carry their own maps, word maps, rollout, pointing game."""

from __future__ import annotations

import pytest
import torch
from conftest import TrainedTiny, build_tiny_model, tiny_config
from torch import Tensor

import vision_attn.layers.attention as attention_module
from vision_attn import Pipeline
from vision_attn.attention_maps import (
    attention_rollout,
    encoder_attention,
    encoder_rollout,
    group_words,
    reduce_maps,
)
from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.tokenizer import TextCodec, train_tokenizer
from vision_attn.layers import AttentionRecorder
from vision_attn.models import VisionAttnModel
from vision_attn.pointing import (
    Scene,
    SceneObject,
    box_patches,
    lookup_selectivity,
    named_object,
    named_objects,
    patch_chance,
    peak_in_box,
    pointing_game,
    question_lookup,
    read_scenes,
)
from vision_attn.pointing import summarise as summarise_pointing
from vision_attn.tasks import GenerationConfig, generate

EOS = 2
PROMPTS = [[1, 3], [1, 4, 7, 9, 11, 5], [1], [1, 4, 20, 5]]  # left-padded when batched


def eos_from_call(model: VisionAttnModel, members: int, first_call: dict[int, int]):
    """From decoder call first_call[b] on (0 = prefill), raise member b's EOS logit by 3, so that some beams end
    early and at different steps (rows b*K .. b*K + K - 1 belong to member b)."""
    calls = {"n": 0}

    def hook(_mod: torch.nn.Module, _inp: tuple, out: Tensor) -> Tensor:
        c, k = calls["n"], out.shape[0] // members
        calls["n"] += 1
        out = out.clone()
        for b, start in first_call.items():
            if c >= start:
                out[b * k : (b + 1) * k, EOS] += 3.0
        return out

    return model.decoder.lm_head.register_forward_hook(hook)


def teacher_forced_maps(model: VisionAttnModel, image: Tensor, prompt: list[int], seq: list[int]) -> Tensor:
    """Cross-attention [L, H, len(seq), N] of the queries that predict seq, from one uncached pass."""
    with torch.inference_mode(), AttentionRecorder(b.cross_attn for b in model.decoder.blocks) as recorder:
        model(image[None], torch.tensor([prompt + seq]))
    weights = recorder.weights
    start = len(prompt) - 1
    return torch.stack([w[0, :, start : start + len(seq)] for w in weights])


def make_pipeline() -> Pipeline:
    """The tiny O(1)-weight model with a small real BPE tokenizer, so that generated words span several tokens."""
    texts = [f"a {s} {c} {x} at the {p}." for s in ("small", "large") for c in ("red", "green", "blue")
             for x in ("circle", "square", "triangle") for p in ("top", "left", "bottom right")]  # fmt: skip
    codec = TextCodec(train_tokenizer(texts * 2, vocab_size=90))
    model = build_tiny_model(tiny_config(vocab_size=codec.vocab_size, max_len=64))  # the CLI asks for 48 tokens
    return Pipeline(model, codec, torch.device("cpu"), batch_size=2)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return make_pipeline()


@pytest.fixture
def photos() -> list[Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 40, 40, generator=g) for _ in range(3)]


# ---------------------------------------------------------------------------------- generation with maps


def gen(model: VisionAttnModel, images: Tensor, prompts: list[list[int]], maps: bool = False, **config):
    return generate(model, images, prompts, GenerationConfig(**config), record_maps=maps)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_explicit_softmax_path_gives_the_sdpa_outputs(make_model, images: Tensor, num_beams: int) -> None:
    model = make_model(dtype=torch.float64)
    images = images.double()
    plain = gen(model, images, PROMPTS, max_new_tokens=10, num_beams=num_beams)
    mapped = gen(model, images, PROMPTS, True, max_new_tokens=10, num_beams=num_beams)
    assert plain.attentions is None
    assert mapped.sequences == plain.sequences and mapped.hypotheses == plain.hypotheses
    assert mapped.scores == pytest.approx(plain.scores, abs=1e-9)
    for seq, maps in zip(mapped.sequences, mapped.attentions, strict=True):
        L, H = len(model.decoder.blocks), model.config.decoder.num_heads
        assert maps.shape == (L, H, len(seq), 16)
        torch.testing.assert_close(maps.sum(-1), torch.ones(L, H, len(seq), dtype=maps.dtype))


def test_plain_generation_never_runs_the_explicit_path(
    tiny_model: VisionAttnModel, images: Tensor, pipe: Pipeline, photos: list[Tensor], monkeypatch
) -> None:
    calls = {"n": 0}
    real = attention_module.attention_weights

    def spy(*args, **kwargs) -> Tensor:
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module, "attention_weights", spy)
    for k in (1, 3):
        gen(tiny_model, images, PROMPTS, max_new_tokens=6, num_beams=k)
    pipe.caption(photos, GenerationConfig(max_new_tokens=6))
    pipe.answer(photos[0], "what color is the circle?")
    pipe.rank_answers(photos[0], "what color is the circle?", top_k=2)
    assert calls["n"] == 0
    gen(tiny_model, images, PROMPTS, True, max_new_tokens=6)
    assert calls["n"] > 0  # the spy sees the explicit path when it is asked for
    calls["n"] = 0
    pipe.rank_answers(photos[0], "what color is the circle?", top_k=2, maps="mean")
    assert calls["n"] > 0
    calls["n"] = 0
    pipe.caption(photos, GenerationConfig(max_new_tokens=6))  # the recorder is detached after a decode with maps
    assert calls["n"] == 0


@pytest.mark.parametrize("seed", [0, 2, 25])
@pytest.mark.parametrize("num_beams", [1, 2, 3, 4])
def test_maps_are_those_of_the_returned_sequence(make_model, images: Tensor, num_beams: int, seed: int) -> None:
    """Beam rows are reordered every step; the returned maps must still equal a teacher-forced pass over the
    returned text, both for hypotheses that ended with EOS and for beams cut at max_new_tokens.

    Seed 2 with 3 beams returns, for member 3, a beam that moved rows at the last step and, for member 0, a
    finished beam that was not in the first row; seed 0 does the latter too (reading either map from the
    wrong row makes this test fail).
    """
    model = make_model(seed=seed, dtype=torch.float64)
    images = images.double()
    max_new = 9
    lengths = []
    for schedule in ({0: 3, 2: 5}, {0: 1, 1: 2, 2: 4, 3: 6}):  # from which decoder call members tend to stop
        with eos_from_call(model, len(PROMPTS), schedule):
            out = gen(model, images, PROMPTS, True, max_new_tokens=max_new, num_beams=num_beams)
        for i, (prompt, seq) in enumerate(zip(PROMPTS, out.sequences, strict=True)):
            torch.testing.assert_close(out.attentions[i], teacher_forced_maps(model, images[i], prompt, seq))
        lengths += [len(s) for s in out.sequences]
    assert any(n < max_new for n in lengths) and any(n == max_new for n in lengths)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_maps_equal_each_member_alone(make_model, images: Tensor, num_beams: int) -> None:
    model = make_model(dtype=torch.float64)
    images = images.double()
    kw = {"max_new_tokens": 8, "num_beams": num_beams}
    batch = gen(model, images, PROMPTS, True, **kw)
    for i, prompt in enumerate(PROMPTS):
        alone = gen(model, images[i : i + 1], [prompt], True, **kw)
        torch.testing.assert_close(batch.attentions[i], alone.attentions[0])


# ------------------------------------------------------------------------------------------ the pipeline


@pytest.mark.parametrize("num_beams", [1, 3])
def test_pipeline_results_hold_maps_that_sum_to_one(pipe: Pipeline, photos: list[Tensor], num_beams: int) -> None:
    config = GenerationConfig(num_beams=num_beams, max_new_tokens=12)
    results = pipe.caption_maps(photos, config)
    assert [r.text for r in results] == pipe.caption(photos, config)
    for r in results:
        T, W = len(r.token_ids), len(r.words)
        assert r.grid == (4, 4) and r.raw.shape == (2, 2, T, 16) and r.layer == "mean"
        assert r.token_maps.shape == (T, 4, 4) and r.word_maps.shape == (W, 4, 4) and r.rollout.shape == (4, 4)
        for maps in (r.token_maps, r.word_maps, r.rollout[None]):
            torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(len(maps)))
        torch.testing.assert_close(r.raw.sum(-1), torch.ones(2, 2, T))
        assert " ".join(r.words) == " ".join(r.text.split())  # random tokens may hold runs of spaces
        assert sorted(i for span in r.word_tokens for i in span) == list(range(T))
        for span, m in zip(r.word_tokens, r.word_maps, strict=True):
            torch.testing.assert_close(m, r.token_maps[span].mean(0))
    assert any(len(span) > 1 for r in results for span in r.word_tokens)  # some words were merged
    last = pipe.caption_maps(photos[0], GenerationConfig(max_new_tokens=12), layer=-1)
    torch.testing.assert_close(last.token_maps.flatten(1), last.raw[-1].mean(0))


def test_pipeline_answers_with_maps(pipe: Pipeline, photos: list[Tensor]) -> None:
    qs = ["what color is the circle?", "where is the red square?"]
    results = pipe.answer_maps(photos[:2], qs)
    assert [r.text for r in results] == pipe.answer(photos[:2], qs)
    alone = pipe.answer_maps(photos[1], qs[1])
    torch.testing.assert_close(alone.raw, results[1].raw)
    torch.testing.assert_close(alone.rollout, results[1].rollout)
    with pytest.raises(ValueError, match="attention_layer"):
        pipe.caption_maps(photos[0], layer=2)
    with pytest.raises(ValueError, match="attention_layer"):
        pipe.rank_answers(photos[0], qs[0], top_k=2, maps=5)


def test_ranked_answers_carry_the_maps_of_the_best_answer_from_one_search(
    pipe: Pipeline, photos: list[Tensor], monkeypatch
) -> None:
    """`rank_answers(maps="mean")` runs one beam search whose best answer is the first ranked one, and its
    maps are those of a separate mapped decode with the same beams and no length penalty."""
    import vision_attn.tasks as tasks_module

    qs = ["what color is the circle?", "where is the red square?", "how many?"]
    searches = {"n": 0}
    real = tasks_module.beam_search

    def counting(*args, **kwargs):
        searches["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks_module, "beam_search", counting)
    ranked = pipe.rank_answers(photos, qs, top_k=3, config=GenerationConfig(num_beams=3), maps="mean")
    assert searches["n"] == 2  # the pipeline's batch size is 2: one search per batch, not one more for the maps
    plain = pipe.rank_answers(photos, qs, top_k=3, config=GenerationConfig(num_beams=3))
    mapped = pipe.answer_maps(photos, qs, GenerationConfig(num_beams=3, length_penalty=0.0))
    for r, p, m in zip(ranked, plain, mapped, strict=True):
        assert [a.answer for a in r.answers] == [a.answer for a in p.answers]
        assert r.maps is not None and r.maps.text == r.answers[0].answer == m.text
        torch.testing.assert_close(r.maps.raw, m.raw)
        assert p.maps is None


def test_group_words_joins_tokens_without_a_leading_space() -> None:
    assert group_words([" a", " lar", "ge", " circle", ",", " red"]) == [[0], [1, 2], [3, 4], [5]]
    assert group_words(["ab", "c", " d"]) == [[0, 1], [2]]
    assert group_words([" ", " ", " x", " y", " "]) == [[0, 1, 2], [3, 4]]  # spaces join a word
    assert group_words([]) == []


def test_reduce_maps_picks_a_layer_or_the_mean() -> None:
    raw = torch.rand(3, 2, 4, 16).softmax(-1)
    torch.testing.assert_close(reduce_maps(raw, -1), raw[2].mean(0))
    torch.testing.assert_close(reduce_maps(raw, 0), raw[0].mean(0))
    torch.testing.assert_close(reduce_maps(raw, "mean"), raw.mean((0, 1)))
    for bad in (3, -4, "last", True):
        with pytest.raises(ValueError, match="attention_layer"):
            reduce_maps(raw, bad)


# --------------------------------------------------------------------------------------------- rollout


def test_rollout_by_hand() -> None:
    """Every token attends only to the last one: one block gives (A + I) / 2 = [[.5, .5], [0, 1]], whose row
    mean is [.25, .75]; two blocks give [[.25, .75], [0, 1]] -> [.125, .875]."""
    to_last = torch.tensor([[0.0, 1.0], [0.0, 1.0]])[None, None]  # [B=1, H=1, 2, 2]
    torch.testing.assert_close(attention_rollout([to_last]), torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(attention_rollout([to_last, to_last]), torch.tensor([[0.125, 0.875]]))
    # a prefix (class) token is left out of rows and columns: [[.5, .5], [0, 1]] over the two patches again
    with_cls = torch.tensor([[0.0, 0.0, 1.0]] * 3)[None, None]
    torch.testing.assert_close(attention_rollout([with_cls], num_prefix_tokens=1), torch.tensor([[0.25, 0.75]]))


@pytest.mark.parametrize("class_token", [False, True])
def test_encoder_attention_is_what_the_blocks_used(class_token: bool) -> None:
    cfg = ModelConfig(
        EncoderConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2, class_token=class_token),
        DecoderConfig(vocab_size=20, dim=32, depth=1, num_heads=2),
    )
    encoder = build_tiny_model(cfg).encoder  # O(1) weights: attention far from uniform
    images = torch.randn(3, 3, 32, 32)
    outputs: list[tuple[Tensor, Tensor]] = []
    handles = [
        blk.attn.register_forward_hook(lambda _m, args, out: outputs.append((args[0], out)))
        for blk in encoder.vit.blocks
    ]
    with torch.inference_mode():
        probs = encoder_attention(encoder, images)
        for h in handles:
            h.remove()
    n = 16 + int(class_token)
    assert len(probs) == 2 and all(p.shape == (3, 2, n, n) for p in probs)
    for blk, p, (x, out) in zip(encoder.vit.blocks, probs, outputs, strict=True):
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 2, n))
        with torch.inference_mode():
            v = blk.attn.qkv(x).view(3, n, 3, 2, 16)[:, :, 2].transpose(1, 2)  # [B, H, N', D]
            torch.testing.assert_close(blk.attn.proj((p @ v).transpose(1, 2).reshape(3, n, 32)), out)
        assert p.amax() > 2.0 / n  # not uniform
    roll = encoder_rollout(encoder, images)
    assert roll.shape == (3, 4, 4)
    torch.testing.assert_close(roll.sum((1, 2)), torch.ones(3))


# ------------------------------------------------------------------------------------------ pointing game


def test_pointing_helpers() -> None:
    peak = torch.zeros(4, 4)
    peak[1, 2] = 1.0  # centre (2.5, 1.5) patches = (80, 48) px on a 128 px image
    assert peak_in_box(peak, (70, 40, 20, 20), 128, 128)
    assert not peak_in_box(peak, (0, 0, 60, 60), 128, 128)
    assert patch_chance((0, 0, 64, 128), 128, 128, (4, 4)) == 0.5
    red_circle = SceneObject(frozenset({"circle", "red"}), (0, 0, 10, 10))
    blue_circle = SceneObject(frozenset({"circle", "blue"}), (20, 0, 10, 10))
    red_square = SceneObject(frozenset({"square", "red"}), (40, 0, 10, 10))
    scene = Scene(128, 128, (red_circle, blue_circle, red_square))
    assert named_object("square.", scene) is red_square and named_object("Blue", scene) is blue_circle
    assert named_object("circle,", scene) is None and named_object("red", scene) is None
    assert named_object("green", scene) is None


@pytest.mark.slow
def test_pointing_game_on_a_trained_model_beats_chance(trained_tiny: TrainedTiny) -> None:
    """Uses the model trained once per session (conftest.py); the game itself takes about a second.

    Measured: 483 words, the layer-mean map's peak in the named object's box 18.6% of the time against 3.7%
    by chance (5.1x); the demo model, trained longer, reaches 13.8x (benchmarks/README.md).
    """
    scenes = read_scenes(trained_tiny.root / "annotations" / "instances_val2014.json")
    pipe = Pipeline(trained_tiny.model, trained_tiny.codec, torch.device("cpu"))
    rows = pointing_game(pipe, trained_tiny.val_records, scenes)
    res = summarise_pointing(rows)["all"]
    print(res)
    assert res["n"] >= 100
    assert res["hit_rate"]["layer mean"] >= 3 * res["chance_box_area"]


# ------------------------------------------------------------------------------------------ question look-up


def test_question_lookup_helpers() -> None:
    # a 4x4 grid on 128 px: patch centres at 16, 48, 80, 112; the box holds the centres (48, 16) and (48, 48)
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[0, 1] = want[1, 1] = True
    assert torch.equal(box_patches((40, 0, 20, 60), 128, 128, (4, 4)), want.flatten())
    red_circle = SceneObject(frozenset({"circle", "red"}), (0, 0, 10, 10), "circle")
    blue_circle = SceneObject(frozenset({"circle", "blue"}), (20, 0, 10, 10), "circle")
    red_square = SceneObject(frozenset({"square", "red"}), (40, 0, 10, 10), "square")
    scene = Scene(128, 128, (red_circle, blue_circle, red_square))
    assert named_objects("circles", scene) == [red_circle, blue_circle]
    assert named_objects("Red,", scene) == [red_circle, red_square]
    assert named_objects("square", scene) == [red_square] and named_objects("green", scene) == []
    # per patch: named 0.6 / 0.1 = 6, other 0.2 / 0.4 = 0.5 -> 12x; then 0.1 / 0.1 over 0.4 / 0.4 -> 1x (no preference)
    mass = torch.tensor([[0.6, 0.2], [0.1, 0.4]]).view(1, 1, 2, 2)  # [L=1, H=1, K=2, (named, other)]
    rows = [{"named": 0.1, "other": 0.4, "mass": mass}, {"named": 0.1, "other": 0.4, "mass": mass[:, :, :1]}]
    sel = lookup_selectivity(rows)  # K = the fewer tokens of the two rows
    assert sel.shape == (1, 1, 1)
    torch.testing.assert_close(sel, torch.tensor([[[12.0]]]))
    torch.testing.assert_close(lookup_selectivity(rows[:1]), torch.tensor([[[12.0, 1.0]]]))


@pytest.mark.slow
def test_question_lookup_on_a_trained_model_finds_colours(trained_tiny: TrainedTiny) -> None:
    """Teacher-forced questions of the once-trained tiny model: on "what shape is the red object?" a head at or
    after the colour word attends to the red object's patches more than to the others', where the same model
    untrained has no preference.

    Measured: best head 1.99x trained, 1.0x untrained (2 layers, 2 heads, the tokens after the word); the demo model
    reaches 10-50x (benchmarks/README.md, "Generalisation suite")."""
    scenes = read_scenes(trained_tiny.root / "annotations" / "instances_val2014.json")

    def selectivity(model: VisionAttnModel) -> tuple[list[dict], float]:
        rows = question_lookup(
            Pipeline(model, trained_tiny.codec, torch.device("cpu")), trained_tiny.val_records, scenes
        )
        shape_of_colour = [r for r in rows if r["question_type"] == "shape" and r["kind"] == "color"]
        assert len(shape_of_colour) >= 50
        return rows, lookup_selectivity(shape_of_colour).amax().item()

    rows, trained = selectivity(trained_tiny.model)
    torch.manual_seed(0)
    _, untrained = selectivity(VisionAttnModel(trained_tiny.model.config))
    print(f"best head: trained {trained:.2f}x, untrained {untrained:.2f}x")
    assert {r["kind"] for r in rows} == {"color", "category"}
    for r in rows:  # masses over disjoint patch sets of one softmax: each in [0, 1], together at most 1
        assert r["mass"].min() >= 0 and (r["mass"].sum(-1) <= 1 + 1e-5).all()
        assert 0 < r["named"] and 0 < r["other"] and r["named"] + r["other"] <= 1
    assert trained >= 1.5 and untrained <= 1.25
