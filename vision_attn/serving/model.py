"""Everything the server asks of `Pipeline`: load a model folder, measure a question, run one batch.

`run_batch` is the one place that runs the model; the rest of `serving/` never calls `Pipeline`, so a change
of its API is a change of this file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from vision_attn.attention_maps import AttentionResult
from vision_attn.config import ModelConfig
from vision_attn.data.tokenizer import load_tokenizer
from vision_attn.inference import Pipeline

Route = Literal["vqa", "caption"]
VQA_MIN_BEAMS = 3  # answers come from beam search with max(top_k, 3) beams, so `answer` does not depend on top_k
MAX_TOP_K, MAX_CAPTION_BEAMS = 10, 8
VQA_NEW_TOKENS, CAPTION_NEW_TOKENS = 8, 48
ATTENTION_DECIMALS = 4  # attention weights in JSON: enough to draw a map, a fraction of the size of full floats
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelFolderError(ValueError):
    """`--model` is not a usable model folder; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Settings:
    """What changes an answer besides its image and question: requests with equal settings run as one batch."""

    top_k: int = 1  # /v1/vqa
    num_beams: int = 1  # /v1/caption
    attention: bool = False


def run_batch(
    pipe: Pipeline, route: Route, settings: Settings, images: list[Image.Image], questions: list[str] | None
) -> list[dict[str, Any]]:
    """The model on one batch of a route, all with `settings`: one answer's JSON fields per image, in order.

    /v1/vqa: `answer`, `answers` (the `top_k` best, with probabilities) and, if asked, `attention` (the maps
    of the best answer). /v1/caption: `caption` and, if asked, `attention`.
    """
    if route == "caption":
        new_tokens = min(CAPTION_NEW_TOKENS, max_len(pipe) - 2)  # the caption prompt is <bos> <caption>
        results = pipe.caption(
            images, num_beams=settings.num_beams, max_new_tokens=new_tokens, return_attention=settings.attention
        )
        if settings.attention:
            return [{"caption": r.text, **attention_json(r)} for r in results]
        return [{"caption": text} for text in results]
    assert questions is not None and len(questions) == len(images)
    beams = max(settings.top_k, VQA_MIN_BEAMS)
    ranked = pipe.answer(images, questions, top_k=settings.top_k, num_beams=beams, max_new_tokens=VQA_NEW_TOKENS)
    answers = [{"answer": r[0]["answer"], "answers": r} for r in ranked]
    # Pipeline's API today needs a second beam search for the maps. With the coming `rank_answers(images, questions,
    # top_k, GenerationConfig(num_beams=beams, max_new_tokens=8), with_maps=attention)` one call gives both.
    if settings.attention:
        maps = pipe.answer(
            images, questions, num_beams=beams, max_new_tokens=VQA_NEW_TOKENS, length_penalty=0.0, return_attention=True
        )
        answers = [{**a, **attention_json(m)} for a, m in zip(answers, maps, strict=True)]
    return answers


def attention_json(result: AttentionResult) -> dict[str, Any]:
    """`{"attention": ...}` for an answer: the text the maps are of, the patch grid [h, w], the decoder layer shown
    ("mean" of all, or an index), per word its map (h rows of w weights summing to 1) and the encoder rollout
    (also [h][w], summing to 1), weights rounded to `ATTENTION_DECIMALS` decimals."""

    def rounded(m: torch.Tensor) -> list[list[float]]:  # [h, w]
        return [[round(v, ATTENTION_DECIMALS) for v in row] for row in m.tolist()]

    words = [{"word": w, "map": rounded(m)} for w, m in zip(result.words, result.word_maps, strict=True)]
    grid = list(result.grid)
    return {
        "attention": {
            "text": result.text,
            "grid": grid,
            "layer": result.layer,
            "words": words,
            "rollout": rounded(result.rollout),
        }
    }


def prompt_tokens(pipe: Pipeline, question: str) -> int:
    """How many tokens `question` takes in the VQA prompt."""
    return len(pipe.codec.vqa_prompt(question))


def max_prompt_tokens(pipe: Pipeline) -> int:
    """The longest VQA prompt that still leaves the model room for an answer."""
    return max_len(pipe) - VQA_NEW_TOKENS


def max_len(pipe: Pipeline) -> int:
    return pipe.model.config.decoder.max_len


def load_pipeline(model_dir: str | Path, device: str, batch_size: int) -> Pipeline:
    """The model in `model_dir` (from `vision-attn export`), checked file by file first, so that a bad folder is
    one `ModelFolderError` naming the file, not a traceback."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelFolderError(f"--model {d}: no such folder (expected the output of `vision-attn export`)")
    missing = [name for name in MODEL_FILES if not (d / name).is_file()]
    if missing:
        raise ModelFolderError(f"--model {d} is not a vision-attn model folder: {', '.join(missing)} missing")
    _check_config(d / "config.json")
    try:
        load_tokenizer(d / "tokenizer.json")
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise ModelFolderError(f"--model {d}: tokenizer.json is not a vision-attn tokenizer ({_one_line(e)})") from e
    try:
        return Pipeline.from_pretrained(d, device=device, batch_size=batch_size)
    except Exception as e:  # safetensors' own error type for a truncated file, torch's for weights of another shape
        raise ModelFolderError(
            f"--model {d}: model.safetensors could not be loaded with config.json ({_one_line(e)})"
        ) from e


def _check_config(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelFolderError(f"--model {path.parent}: config.json is not valid JSON ({e})") from e
    missing = _missing_keys(data)
    if missing:
        raise ModelFolderError(f"--model {path.parent}: config.json lacks {', '.join(missing)}")
    try:
        ModelConfig.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ModelFolderError(f"--model {path.parent}: config.json is not a vision-attn model config ({e})") from e


def _missing_keys(data: Any) -> list[str]:
    """The top-level keys of `ModelConfig` that `data` lacks (nested ones may be left out: they have defaults, and
    weights that do not fit them fail to load)."""
    if not isinstance(data, dict):
        return ["everything (it is not a JSON object)"]
    return [f"'{f.name}'" for f in dataclasses.fields(ModelConfig) if f.name not in data]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
