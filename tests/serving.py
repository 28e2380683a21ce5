"""What the tests of `vision-attn serve` share: a tiny served model, test images, the Pipeline's own answers, and
one server for test_server.py and test_openapi.py. Starting, stopping and calling a server is
`vision_attn.serving.harness`, which benchmarks/serve_throughput.py uses too."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, tiny_config
from PIL import Image

from vision_attn import GenerationConfig, Pipeline
from vision_attn.attention_maps import AttentionResult
from vision_attn.data.tokenizer import save_tokenizer, train_tokenizer
from vision_attn.serving.harness import RunningServer, running_server
from vision_attn.serving.model import ATTENTION_DECIMALS, VQA_MIN_BEAMS

TEXTS = [
    "what color is the circle?",
    "how many objects are there?",
    "a small red square on the left and a large blue circle at the top.",
    "is there a green triangle?",
    "red",
    "blue",
    "three",
    "yes",
] * 4
MAX_PIXELS, MAX_CHARS, MAX_BODY_MB = 100 * 100, 40, 0.25  # the small limits of the shared server
QUESTIONS = ["what color is the circle?", "how many objects are there?", "is there a green triangle?", "where?"]


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [png(32 + 8 * i, 40 + 4 * i, seed=i) for i in range(6)]


def save_served_model(out: Path) -> Path:
    """A tiny model with varied, image-dependent outputs (seeded O(1) weights) and a real tokenizer, in `out`."""
    tok = train_tokenizer(TEXTS, vocab_size=120)
    config = tiny_config(vocab_size=len(tok), max_len=64)
    build_tiny_model(config).save_pretrained(out)
    save_tokenizer(tok, out / "tokenizer.json")
    return out


# Fixtures for the modules that import them (by these function names; tests ask for them by `name`).
@pytest.fixture(scope="session", name="serve_model_dir")
def serve_model_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_served_model(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="session", name="serve_pipe")
def serve_pipe_fixture(serve_model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(serve_model_dir, device="cpu")


@pytest.fixture(scope="session", name="served")
def served_fixture(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`vision-attn serve` in a subprocess with small limits and batching on (8 requests, 50 ms)."""
    args = ["--max-pixels", str(MAX_PIXELS), "--max-question-chars", str(MAX_CHARS), "--max-body-mb", str(MAX_BODY_MB)]
    args += ["--max-batch-size", "8", "--batch-timeout", "0.05", "--threads", "1", "--log-level", "info"]
    with running_server(serve_model_dir, args, tmp_path_factory.mktemp("serve_log") / "serve.log") as server:
        yield server


def expected_vqa(pipe: Pipeline, image: bytes, question: str, top_k: int | None) -> list[dict]:
    """What /v1/vqa must answer: Pipeline's ranked answers for the request alone."""
    k = top_k or 1
    ranking = pipe.rank_answers(image, question, k, GenerationConfig(num_beams=max(k, VQA_MIN_BEAMS)))
    return [dataclasses.asdict(a) for a in ranking.answers]


def expected_caption(pipe: Pipeline, image: bytes, beams: int | None) -> str:
    return pipe.caption(image, GenerationConfig(num_beams=beams or 1, max_new_tokens=48))


def expected_maps(pipe: Pipeline, image: bytes, question: str | None, beams: int) -> AttentionResult:
    """What an answer's `attention` must hold: Pipeline's maps for the same request."""
    if question is None:
        return pipe.caption_maps(image, GenerationConfig(num_beams=beams, max_new_tokens=48))
    return pipe.answer_maps(image, question, GenerationConfig(num_beams=beams, max_new_tokens=8, length_penalty=0.0))


def assert_same_answers(got: dict, want: list[dict]) -> None:
    assert got["answer"] == want[0]["answer"]
    assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want]
    assert [a["probability"] for a in got["answers"]] == pytest.approx([a["probability"] for a in want], abs=1e-5)
    assert got["latency_ms"] >= 0


def assert_same_maps(got: dict, want: AttentionResult) -> None:
    """`got["attention"]` holds `want`'s words, each map and the rollout on its grid, rounded, each summing to ~1."""
    att, (h, w) = got["attention"], want.grid
    assert att["grid"] == [h, w] and att["text"] == want.text and att["layer"] == "mean"
    assert [x["word"] for x in att["words"]] == want.words
    tol = 0.5 * 10**-ATTENTION_DECIMALS + 1e-7  # rounding
    pairs = [*zip([x["map"] for x in att["words"]], want.word_maps, strict=True), (att["rollout"], want.rollout)]
    for got_map, want_map in pairs:
        m = torch.tensor(got_map)
        assert m.shape == (h, w)
        assert float(m.sum()) == pytest.approx(1.0, abs=h * w * tol)
        torch.testing.assert_close(m, want_map, atol=tol, rtol=0)
