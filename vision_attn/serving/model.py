"""Everything the server asks of `Pipeline`: load a model folder, measure a question, run one batch.

`run_batch` is the one place that runs the model; the rest of `serving/` never calls `Pipeline`, so a change
of its API is a change of this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from vision_attn.attention_maps import AttentionResult
from vision_attn.inference import Pipeline
from vision_attn.tasks import GenerationConfig, vqa_prompt

Route = Literal["vqa", "caption"]
VQA_MIN_BEAMS = 3  # answers come from beam search with max(top_k, 3) beams, so `answer` does not depend on top_k
MAX_TOP_K, MAX_CAPTION_BEAMS = 10, 8
VQA_NEW_TOKENS, CAPTION_NEW_TOKENS = 8, 48
ATTENTION_DECIMALS = 4  # attention weights in JSON: enough to draw a map, a fraction of the size of full floats


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
    of the best answer, from the same beam search). /v1/caption: `caption` and, if asked, `attention`.
    """
    if route == "caption":
        new_tokens = min(CAPTION_NEW_TOKENS, max_len(pipe) - 2)  # the caption prompt is <bos> <caption>
        config = GenerationConfig(max_new_tokens=new_tokens, num_beams=settings.num_beams)
        if settings.attention:
            return [{"caption": r.text, **attention_json(r)} for r in pipe.caption_maps(images, config)]
        return [{"caption": text} for text in pipe.caption(images, config)]
    assert questions is not None and len(questions) == len(images)
    config = GenerationConfig(max_new_tokens=VQA_NEW_TOKENS, num_beams=max(settings.top_k, VQA_MIN_BEAMS))
    rankings = pipe.rank_answers(images, questions, settings.top_k, config, maps="mean" if settings.attention else None)
    out = []
    for r in rankings:
        answers = [dataclasses.asdict(a) for a in r.answers]
        out.append(
            {"answer": answers[0]["answer"], "answers": answers, **({} if r.maps is None else attention_json(r.maps))}
        )
    return out


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
    return len(vqa_prompt(pipe.codec, question))


def max_prompt_tokens(pipe: Pipeline) -> int:
    """The longest VQA prompt that still leaves the model room for an answer."""
    return max_len(pipe) - VQA_NEW_TOKENS


def max_len(pipe: Pipeline) -> int:
    return pipe.model.config.decoder.max_len


def load_pipeline(model_dir: str | Path, device: str, batch_size: int, max_pixels: int) -> Pipeline:
    """The model in `model_dir` (from `vision-attn export`), refusing images over `max_pixels`; a bad folder raises
    `models.ModelFolderError` naming the file and what is wrong with it (`Pipeline.from_pretrained` checks each)."""
    return Pipeline.from_pretrained(model_dir, device=device, batch_size=batch_size, max_pixels=max_pixels)
