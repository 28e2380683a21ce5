"""Evaluation in one place: generate for a batch of records, score captions and answers, write result files.

Used by the LightningModule's validation and by `vision-attn evaluate`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from vision_attn.data.collate import collate_images
from vision_attn.data.datasets import ImageDataset
from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import ImageRecord, QAItem
from vision_attn.data.tokenizer import TextCodec
from vision_attn.generation import CompiledDecoder
from vision_attn.inference import generate_answers, generate_captions
from vision_attn.metrics import caption_scores, majority_baseline, vqa_scores
from vision_attn.models import VisionAttnModel

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Generated captions (with references) and answers (with their VQAv2 annotations)."""

    captions: dict[int, str] = field(default_factory=dict)
    references: dict[int, list[str]] = field(default_factory=dict)
    answers: dict[int, str] = field(default_factory=dict)
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)

    def merge(self, other: Predictions) -> None:
        self.captions.update(other.captions)
        self.references.update(other.references)
        self.answers.update(other.answers)
        self.annotations.update(other.annotations)


def predict_batch(
    model: VisionAttnModel,
    codec: TextCodec,
    images: Tensor,
    records: list[ImageRecord],
    caption_tokens: int = 48,
    answer_tokens: int = 8,
    num_beams: int = 1,
    compiled: CompiledDecoder | None = None,
) -> Predictions:
    """Caption every image that has references and answer every annotated question. images [B, 3, S, S].

    compiled: decode through this `CompiledDecoder` of `model` (see `generate`).
    """
    out = Predictions()
    gen = {"num_beams": num_beams, "compiled": compiled}
    with_caps = [i for i, r in enumerate(records) if r.captions]
    if with_caps:
        caps = generate_captions(model, codec, images[with_caps], max_new_tokens=caption_tokens, **gen)
        for i, c in zip(with_caps, caps, strict=True):
            out.captions[records[i].image_id] = c
            out.references[records[i].image_id] = records[i].captions
    qs = [(i, q) for i, r in enumerate(records) for q in r.questions if q.answers]
    if qs:
        index = torch.tensor([i for i, _ in qs], device=images.device)
        questions = [q.question for _, q in qs]
        answers = generate_answers(model, codec, images, questions, index, max_new_tokens=answer_tokens, **gen)
        for (_, q), a in zip(qs, answers, strict=True):
            out.answers[q.question_id] = a
            out.annotations[q.question_id] = vqa_annotation(q)
    return out


def vqa_annotation(q: QAItem) -> dict[str, Any]:
    """A question's VQAv2 annotation dict, as the metrics read it."""
    return {
        "question_id": q.question_id,
        "answers": [{"answer": x} for x in q.answers],
        "multiple_choice_answer": q.answer,
        "question_type": q.question_type,
        "answer_type": q.answer_type,
    }


def score(preds: Predictions, meteor: bool = False) -> dict[str, Any]:
    """Caption metrics (BLEU-1..4, ROUGE-L, CIDEr, METEOR if asked) and VQA accuracy (percent, overall, per type)."""
    metrics: dict[str, Any] = {}
    if preds.captions:
        metrics.update(caption_scores(preds.captions, preds.references, meteor=meteor))
    if preds.answers:
        vqa = vqa_scores(preds.answers, list(preds.annotations.values()))
        metrics["vqa_accuracy"] = vqa["vqa_accuracy"]
        metrics["per_question_type"] = vqa["per_question_type"]
        metrics["per_answer_type"] = vqa["per_answer_type"]
        metrics["num_questions"] = vqa["num_questions"]
    return metrics


@torch.inference_mode()
def evaluate_records(
    model: VisionAttnModel,
    codec: TextCodec,
    records: list[ImageRecord],
    batch_size: int = 32,
    num_workers: int = 0,
    num_beams: int = 1,
    compiled: CompiledDecoder | None = None,
) -> Predictions:
    """Generate for all records (captions and questions), batched, with a progress bar."""
    device = next(model.parameters()).device
    ds = ImageDataset(records, model.config.encoder.image_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    preds = Predictions()
    skipped = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False):
        skipped += batch["skipped"]
        if "images" in batch:
            images = batch["images"].to(device)
            preds.merge(predict_batch(model, codec, images, batch["records"], num_beams=num_beams, compiled=compiled))
    if skipped:
        log.warning("skipped %d unreadable images", skipped)
    return preds


def load_results(paths: list[str | Path], records: list[ImageRecord]) -> Predictions:
    """Read result files made by any system and pair them with the split's references and annotations.

    Each file is a COCO caption results list (`[{"image_id", "caption"}]`) or a VQAv2 results list
    (`[{"question_id", "answer"}]`); the kind is read from the first entry's keys.

    Raises:
        DataFormatError: a file is not valid JSON, not a list of such dicts, or names an id the split lacks.
    """
    by_image = {r.image_id: r for r in records}
    questions = {q.question_id: q for r in records for q in r.questions if q.answers}
    preds = Predictions()
    for path in map(Path, paths):
        try:
            entries = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataFormatError(f"{path}: cannot read a JSON results file ({e})") from e
        if not isinstance(entries, list) or not entries or not all(isinstance(x, dict) for x in entries):
            raise DataFormatError(f"{path}: a results file is a non-empty JSON list of objects")
        kind = "caption" if "caption" in entries[0] else "answer" if "answer" in entries[0] else None
        if kind is None:
            raise DataFormatError(f"{path}: entries need 'image_id' + 'caption' or 'question_id' + 'answer'")
        id_key, known = ("image_id", by_image) if kind == "caption" else ("question_id", questions)
        for n, x in enumerate(entries):
            if not isinstance(x.get(kind), str) or not isinstance(x.get(id_key), int):
                raise DataFormatError(f"{path}: entry {n} needs an integer {id_key!r} and a string {kind!r}: {x}")
            if x[id_key] not in known:
                raise DataFormatError(f"{path}: entry {n}: {id_key} {x[id_key]} is not in the evaluated split")
            if kind == "caption":
                rec = by_image[x["image_id"]]
                if not rec.captions:
                    raise DataFormatError(f"{path}: entry {n}: image {rec.image_id} has no reference captions")
                preds.captions[rec.image_id] = x["caption"]
                preds.references[rec.image_id] = rec.captions
            else:
                q = questions[x["question_id"]]
                preds.answers[q.question_id] = x["answer"]
                preds.annotations[q.question_id] = vqa_annotation(q)
    if preds.answers and len(preds.answers) < len(questions):
        log.warning("results answer %d of the split's %d questions; scoring those", len(preds.answers), len(questions))
    return preds


def write_results(preds: Predictions, metrics: dict[str, Any], out_dir: str | Path) -> None:
    """COCO caption results, VQAv2 results and metrics.json under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caps = [{"image_id": i, "caption": c} for i, c in sorted(preds.captions.items())]
    ans = [{"question_id": q, "answer": a} for q, a in sorted(preds.answers.items())]
    (out / "captions_results.json").write_text(json.dumps(caps, indent=1) + "\n")
    (out / "vqa_results.json").write_text(json.dumps(ans, indent=1) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def with_baseline(metrics: dict[str, Any], train: list[ImageRecord], evaluated: Predictions) -> dict[str, Any]:
    """Add the majority-answer baseline of each question type (most common training answer of the type)."""
    train_anns = [vqa_annotation(q) for r in train for q in r.questions if q.answer is not None]
    if not train_anns or not evaluated.annotations:
        return metrics
    base = majority_baseline(train_anns, list(evaluated.annotations.values()))
    per_type = metrics.get("per_question_type", {})
    metrics["per_question_type_vs_majority"] = {
        t: {"accuracy": per_type.get(t), "majority_baseline": base.get(t)} for t in sorted(per_type)
    }
    metrics["majority_baseline"] = base.get("overall")
    return metrics
