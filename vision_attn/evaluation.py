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
from vision_attn.data.datamodule import die_with_parent
from vision_attn.data.datasets import ImageDataset
from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import ImageRecord, QAItem
from vision_attn.inference import Pipeline
from vision_attn.metrics import caption_scores, majority_baseline, vqa_scores
from vision_attn.tasks import GenerationConfig, Tasks

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Generated captions (with references) and answers (with their VQAv2 annotations)."""

    captions: dict[int, str] = field(default_factory=dict)
    references: dict[int, list[str]] = field(default_factory=dict)
    answers: dict[int, str] = field(default_factory=dict)
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    partial: bool = False  # read from result files that leave out some of the split's ids (`load_results`)

    def merge(self, other: Predictions) -> None:
        self.captions.update(other.captions)
        self.references.update(other.references)
        self.answers.update(other.answers)
        self.annotations.update(other.annotations)
        self.partial = self.partial or other.partial


def predict_batch(
    tasks: Tasks,
    images: Tensor,
    records: list[ImageRecord],
    caption: GenerationConfig | None = None,
    answer: GenerationConfig | None = None,
) -> Predictions:
    """Caption every image that has references and answer every annotated question, through the task layer.

    images [B, 3, S, S] on the model's device, image i of records[i]; `caption`/`answer`: how to decode each
    (default greedy, up to 48 and 8 tokens). Runs under the caller's autocast.
    """
    out = Predictions()
    with_caps = [i for i, r in enumerate(records) if r.captions]
    if with_caps:
        caps = tasks.captions(images[with_caps], caption)
        for i, c in zip(with_caps, caps, strict=True):
            out.captions[records[i].image_id] = c
            out.references[records[i].image_id] = records[i].captions
    qs = [(i, q) for i, r in enumerate(records) for q in r.questions if q.answers]
    if qs:
        index = torch.tensor([i for i, _ in qs], device=images.device)
        answers = tasks.answers(images, [q.question for _, q in qs], index, answer)
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
    if preds.partial:
        metrics["partial"] = True
    return metrics


def evaluate_records(
    pipe: Pipeline,
    records: list[ImageRecord],
    num_workers: int = 0,
    config: GenerationConfig | None = None,
    answer_config: GenerationConfig | None = None,
) -> Predictions:
    """Caption and answer all records with the pipeline (its device, autocast and batch size), with a progress bar.

    config: how to decode captions, and answers unless `answer_config` is given (default greedy; their lengths
        default to each task's).
    """
    ds = ImageDataset(records, pipe.model.config.encoder.image_size)
    loader = DataLoader(
        ds, pipe.batch_size, num_workers=num_workers, collate_fn=collate_images, worker_init_fn=die_with_parent
    )
    preds = Predictions()
    skipped = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False):
        skipped += batch["skipped"]
        if "images" in batch:
            with pipe.running():
                preds.merge(
                    predict_batch(
                        pipe.tasks, batch["images"].to(pipe.device), batch["records"], config, answer_config or config
                    )
                )
    if skipped:
        log.warning("skipped %d unreadable images", skipped)
    return preds


def load_results(paths: list[str | Path], records: list[ImageRecord], allow_partial: bool = False) -> Predictions:
    """Read result files made by any system and pair them with the split's references and annotations.

    Each file is a COCO caption results list (`[{"image_id", "caption"}]`) or a VQAv2 results list
    (`[{"question_id", "answer"}]`); the kind is read from the first entry's keys. Files of one kind are read as one.
    As with the official tools, results must cover the split: the VQA loader (`loadRes`) refuses a file that lacks a
    question, and the COCO caption evaluation fails on an image without a caption unless told to score only the
    images in the results. `allow_partial` scores what is there and marks the predictions `partial`.

    A question id given twice is a warning and its last answer is scored (the VQA loader keeps the last one); an image
    id given twice is an error, since the COCO toolkit's scorers accept exactly one caption per image.

    Raises:
        DataFormatError: a file is not valid JSON, not a list of such dicts, names an id the split lacks, gives an
            image two captions, or (without `allow_partial`) leaves out some of the split's ids.
    """
    by_image = {r.image_id: r for r in records}
    questions = {q.question_id: q for r in records for q in r.questions if q.answers}
    found: dict[str, dict[int, str]] = {"caption": {}, "answer": {}}
    files: dict[str, list[str]] = {"caption": [], "answer": []}
    repeated: dict[str, set[int]] = {"caption": set(), "answer": set()}
    for path in map(Path, paths):
        kind, id_key, entries = _read_results_file(path)
        known = by_image if kind == "caption" else questions
        files[kind].append(str(path))
        for n, x in enumerate(entries):
            if not isinstance(x.get(kind), str) or not isinstance(x.get(id_key), int):
                raise DataFormatError(f"{path}: entry {n} needs an integer {id_key!r} and a string {kind!r}: {x}")
            if x[id_key] not in known:
                raise DataFormatError(f"{path}: entry {n}: {id_key} {x[id_key]} is not in the evaluated split")
            if kind == "caption" and not by_image[x["image_id"]].captions:
                raise DataFormatError(f"{path}: entry {n}: image {x['image_id']} has no reference captions")
            if x[id_key] in found[kind]:
                repeated[kind].add(x[id_key])
            found[kind][x[id_key]] = x[kind]
    captions, answers = found["caption"], found["answer"]
    if repeated["caption"]:
        raise DataFormatError(
            f"{', '.join(files['caption'])}: image ids with more than one caption: {len(repeated['caption'])} "
            f"(e.g. {sorted(repeated['caption'])[:3]}); the COCO caption toolkit scores exactly one per image"
        )
    if repeated["answer"]:
        log.warning(
            "%s: question ids answered more than once: %d; scoring the last answer of each, as the official VQA "
            "loader does",
            ", ".join(files["answer"]),
            len(repeated["answer"]),
        )
    with_refs = {r.image_id for r in records if r.captions}
    partial = _check_coverage(files["caption"], "image", set(captions), with_refs, allow_partial)
    partial |= _check_coverage(files["answer"], "question", set(answers), set(questions), allow_partial)

    # In split order, not the files' order: the scores then do not depend on how a system ordered its results.
    preds = Predictions(partial=partial)
    for rec in records:
        if rec.image_id in captions:
            preds.captions[rec.image_id] = captions[rec.image_id]
            preds.references[rec.image_id] = rec.captions
        for q in rec.questions:
            if q.question_id in answers:
                preds.answers[q.question_id] = answers[q.question_id]
                preds.annotations[q.question_id] = vqa_annotation(q)
    return preds


def _read_results_file(path: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """A results file's kind ("caption" or "answer"), its id key and its entries; DataFormatError if malformed."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read a JSON results file ({e})") from e
    if not isinstance(entries, list) or not entries or not all(isinstance(x, dict) for x in entries):
        raise DataFormatError(f"{path}: a results file is a non-empty JSON list of objects")
    if "caption" in entries[0]:
        return "caption", "image_id", entries
    if "answer" in entries[0]:
        return "answer", "question_id", entries
    raise DataFormatError(f"{path}: entries need 'image_id' + 'caption' or 'question_id' + 'answer'")


def _check_coverage(files: list[str], what: str, given: set[int], expected: set[int], allow_partial: bool) -> bool:
    """Whether results of one kind leave out some of the split's ids; DataFormatError for that unless allowed."""
    missing = expected - given
    if not files or not missing:
        return False
    where = ", ".join(files)
    if not allow_partial:
        raise DataFormatError(
            f"{where}: no result for {len(missing)} of the split's {len(expected)} {what} ids "
            f"(e.g. {sorted(missing)[:3]}); the official evaluation needs them all, or pass --allow-partial "
            "(allow_partial=True) to score only those given"
        )
    log.warning("%s: scoring %d of the split's %d %s ids (partial results)", where, len(given), len(expected), what)
    return True


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
