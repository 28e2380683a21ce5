"""Readers for COCO captions and VQAv2 json files, validated at start-up.

Every malformed file raises :class:`DataFormatError` naming the file and the field, e.g.
``/x/captions_train2014.json: annotations[12].caption must be a string, got int``. Image files are not
checked here (a stat per image is slow on big sets); the dataset skips and counts unreadable ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vision_attn.data.errors import DataFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "ImageRecord",
    "QAItem",
    "SplitFiles",
    "find_split_files",
    "merge_records",
    "read_coco_captions",
    "read_split",
    "read_vqa",
]


@dataclass
class QAItem:
    """One VQA question about an image, with its answers when annotated."""

    question_id: int
    question: str
    answers: list[str]  # the (usually 10) human answers; empty if there is no annotations file (test-dev)
    answer: str | None  # multiple_choice_answer, the training target; None if unannotated
    question_type: str  # "" if unannotated
    answer_type: str  # "yes/no", "number", "other"; "" if unannotated


@dataclass
class ImageRecord:
    """One image with all its captions and questions."""

    image_id: int
    path: Path
    captions: list[str] = field(default_factory=list)
    questions: list[QAItem] = field(default_factory=list)


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split found by :func:`find_split_files`."""

    image_dir: Path
    captions_json: Path | None = None
    questions_json: Path | None = None
    annotations_json: Path | None = None
    instances_json: Path | None = None


# --------------------------------------------------------------------------- validation helpers

_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _type_name(value: Any) -> str:
    """The JSON-ish type of a value, for error messages."""
    return "null" if value is None else type(value).__name__


def _load_json(path: Path) -> Any:
    """Parse a json file, turning every failure into a DataFormatError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a directory, expected a json file") from None
    try:
        return json.loads(raw)  # bytes: json detects UTF-8/16/32 itself
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None


def _top(path: Path, data: Any, key: str, kind: type) -> Any:
    """A required top-level key of a json object."""
    if type(data) is not dict:
        raise DataFormatError(f"{path}: the top level must be an object, got {_type_name(data)}")
    if key not in data:
        raise DataFormatError(f"{path}: missing top-level key {key!r}")
    value = data[key]
    if type(value) is not kind:
        raise DataFormatError(f"{path}: top-level key {key!r} must be {_KIND_NAMES[kind]}, got {_type_name(value)}")
    return value


def _item(path: Path, value: Any, where: str, index: int) -> dict[str, Any]:
    """``where[index]`` must be an object."""
    if type(value) is not dict:
        raise DataFormatError(f"{path}: {where}[{index}] must be an object, got {_type_name(value)}")
    return value


def _field(path: Path, item: dict[str, Any], key: str, kind: type, where: str, index: int) -> Any:
    """A required field ``where[index].key`` of type ``kind`` (exact: a bool is not an int)."""
    try:
        value = item[key]
    except KeyError:
        raise DataFormatError(f"{path}: {where}[{index}] is missing key {key!r}") from None
    if type(value) is not kind:  # exact type on purpose; json only builds exact types, and bool is not an id
        raise DataFormatError(
            f"{path}: {where}[{index}].{key} must be {_KIND_NAMES[kind]}, got {_type_name(value)} ({value!r:.60})"
        )
    return value


# --------------------------------------------------------------------------- COCO captions


def read_coco_captions(captions_json: Path, image_dir: Path) -> dict[int, ImageRecord]:
    """Read a COCO captions json (``captions_{split}2014.json``).

    Args:
        captions_json: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``.
        image_dir: The folder the ``file_name`` entries are relative to.

    Returns:
        ``image_id -> ImageRecord`` with stripped captions, one record per entry of ``images`` (also those
        without captions).

    Raises:
        DataFormatError: The file is missing, not JSON, or a field is missing or of the wrong type.
    """
    return _read_coco(Path(captions_json), Path(image_dir))[0]


def _read_coco(captions_json: Path, image_dir: Path) -> tuple[dict[int, ImageRecord], dict[int, str]]:
    """Records of a captions json, and its ``image_id -> file_name`` map for :func:`read_vqa`."""
    data = _load_json(captions_json)
    images = _top(captions_json, data, "images", list)
    annotations = _top(captions_json, data, "annotations", list)

    file_names: dict[int, str] = {}
    for i, raw in enumerate(images):
        image = _item(captions_json, raw, "images", i)
        image_id = _field(captions_json, image, "id", int, "images", i)
        if image_id in file_names:
            raise DataFormatError(f"{captions_json}: images[{i}].id {image_id} is duplicated")
        file_names[image_id] = _field(captions_json, image, "file_name", str, "images", i)
    records = {image_id: ImageRecord(image_id, image_dir / name) for image_id, name in file_names.items()}

    empty = 0
    for i, raw in enumerate(annotations):
        ann = _item(captions_json, raw, "annotations", i)
        image_id = _field(captions_json, ann, "image_id", int, "annotations", i)
        caption = _field(captions_json, ann, "caption", str, "annotations", i).strip()
        if image_id not in records:
            raise DataFormatError(f"{captions_json}: annotations[{i}].image_id {image_id} is not among 'images'")
        if caption:
            records[image_id].captions.append(caption)
        else:
            empty += 1
    if empty:
        logger.warning("%s: skipped %d empty captions", captions_json, empty)
    logger.info("%s: read %d images with %d captions", captions_json, len(records), len(annotations) - empty)
    return records, file_names


# --------------------------------------------------------------------------- VQAv2


def read_vqa(
    questions_json: Path,
    annotations_json: Path | None,
    image_dir: Path,
    file_names: dict[int, str] | None = None,
) -> dict[int, ImageRecord]:
    """Read VQAv2 questions and, if given, their annotations.

    Image file names come from ``file_names`` (``image_id -> file_name``, e.g. from the captions json of the
    same split) where it has the id; otherwise from the COCO 2014 convention
    ``COCO_{data_subtype}_{image_id:012d}.jpg``, or the COCO 2017 one ``{image_id:012d}.jpg`` when a probe of a
    few images finds only 2017 names in ``image_dir``.

    Args:
        questions_json: ``{"data_subtype", "questions": [{"image_id", "question", "question_id"}]}``.
        annotations_json: ``{"annotations": [{"question_id", "image_id", "answers": [{"answer"}],
            "multiple_choice_answer", "question_type", "answer_type"}]}``, or None for unannotated
            questions (test-dev style).
        image_dir: The folder holding the images.
        file_names: Optional ``image_id -> file_name`` relative to ``image_dir``.

    Returns:
        ``image_id -> ImageRecord`` whose ``questions`` are in file order.

    Raises:
        DataFormatError: A file is missing, not JSON, a field is missing or mistyped, an annotation has no
            question or a different image_id, or a question has no annotation.
    """
    questions_json, image_dir = Path(questions_json), Path(image_dir)
    data = _load_json(questions_json)
    questions = _top(questions_json, data, "questions", list)
    subtype = data.get("data_subtype")
    if subtype is not None and type(subtype) is not str:
        raise DataFormatError(
            f"{questions_json}: top-level key 'data_subtype' must be a string, got {_type_name(subtype)}"
        )

    items: dict[int, QAItem] = {}
    image_of: dict[int, int] = {}  # question_id -> image_id
    for i, raw in enumerate(questions):
        q = _item(questions_json, raw, "questions", i)
        image_id = _field(questions_json, q, "image_id", int, "questions", i)
        question_id = _field(questions_json, q, "question_id", int, "questions", i)
        text = _field(questions_json, q, "question", str, "questions", i).strip()
        if question_id in items:
            raise DataFormatError(f"{questions_json}: questions[{i}].question_id {question_id} is duplicated")
        items[question_id] = QAItem(question_id, text, answers=[], answer=None, question_type="", answer_type="")
        image_of[question_id] = image_id

    if annotations_json is not None:
        _read_vqa_annotations(Path(annotations_json), questions_json, subtype, items, image_of)

    image_ids = sorted(set(image_of.values()))
    name_of = _vqa_file_namer(questions_json, subtype, image_dir, image_ids, file_names or {})
    records = {image_id: ImageRecord(image_id=image_id, path=image_dir / name_of(image_id)) for image_id in image_ids}
    for question_id, item in items.items():
        records[image_of[question_id]].questions.append(item)
    logger.info(
        "%s: read %d questions (%s) on %d images",
        questions_json,
        len(items),
        "annotated" if annotations_json is not None else "unannotated",
        len(records),
    )
    return records


def _read_vqa_annotations(
    annotations_json: Path,
    questions_json: Path,
    subtype: str | None,
    items: dict[int, QAItem],
    image_of: dict[int, int],
) -> None:
    """Validate the annotations json and fill the answers of ``items`` in place."""
    data = _load_json(annotations_json)
    annotations = _top(annotations_json, data, "annotations", list)
    ann_subtype = data.get("data_subtype")
    if subtype is not None and type(ann_subtype) is str and ann_subtype != subtype:
        raise DataFormatError(
            f"{annotations_json}: data_subtype {ann_subtype!r} does not match {subtype!r} of {questions_json}"
        )

    annotated: set[int] = set()
    for i, raw in enumerate(annotations):
        ann = _item(annotations_json, raw, "annotations", i)
        question_id = _field(annotations_json, ann, "question_id", int, "annotations", i)
        image_id = _field(annotations_json, ann, "image_id", int, "annotations", i)
        raw_answers = _field(annotations_json, ann, "answers", list, "annotations", i)
        answer = _field(annotations_json, ann, "multiple_choice_answer", str, "annotations", i)
        question_type = _field(annotations_json, ann, "question_type", str, "annotations", i)
        answer_type = _field(annotations_json, ann, "answer_type", str, "annotations", i)
        try:  # fast path for ~5M answers on VQAv2 train: only str has .strip() among json values
            answers = [a["answer"].strip() for a in raw_answers]
        except (TypeError, KeyError, AttributeError):
            where = f"annotations[{i}].answers"  # the slow path names the bad entry
            for j, a in enumerate(raw_answers):
                _field(annotations_json, _item(annotations_json, a, where, j), "answer", str, where, j)
            raise

        if question_id not in items:
            raise DataFormatError(
                f"{annotations_json}: annotations[{i}].question_id {question_id} has no question in {questions_json}"
            )
        if image_id != image_of[question_id]:
            raise DataFormatError(
                f"{annotations_json}: annotations[{i}].image_id {image_id} does not match image_id "
                f"{image_of[question_id]} of question_id {question_id} in {questions_json}"
            )
        if question_id in annotated:
            raise DataFormatError(f"{annotations_json}: annotations[{i}].question_id {question_id} is annotated twice")
        annotated.add(question_id)
        item = items[question_id]
        item.answers = answers
        item.answer = answer.strip()
        item.question_type = question_type
        item.answer_type = answer_type

    missing = [question_id for question_id in items if question_id not in annotated]
    if missing:
        raise DataFormatError(
            f"{annotations_json}: {len(missing)} of {len(items)} questions in {questions_json} have no annotation "
            f"(first question_id {missing[0]}); pass annotations_json=None only for unannotated splits"
        )


def _vqa_file_namer(
    questions_json: Path,
    subtype: str | None,
    image_dir: Path,
    image_ids: list[int],
    file_names: dict[int, str],
) -> Callable[[int], str]:
    """Pick how VQA image ids become file names, probing only a few files (not one stat per image)."""
    unmapped = [image_id for image_id in image_ids if image_id not in file_names]
    if not unmapped:
        return file_names.__getitem__

    def coco2014(image_id: int) -> str:
        return f"COCO_{subtype}_{image_id:012d}.jpg"

    def coco2017(image_id: int) -> str:
        return f"{image_id:012d}.jpg"

    convention: Callable[[int], str] | None = None
    for image_id in unmapped[:5]:  # the first probe that finds a file decides
        if subtype is not None and (image_dir / coco2014(image_id)).is_file():
            convention = coco2014
            break
        if (image_dir / coco2017(image_id)).is_file():
            convention = coco2017
            break
    if convention is None:
        if subtype is None:
            raise DataFormatError(
                f"{questions_json}: missing top-level key 'data_subtype', needed to build COCO 2014 file names "
                f"such as COCO_train2014_{unmapped[0]:012d}.jpg (no COCO 2017 names found in {image_dir}); "
                "pass file_names instead"
            )
        convention = coco2014
    if convention is coco2017:
        logger.info("%s: using COCO 2017 file names (%s) in %s", questions_json, coco2017(unmapped[0]), image_dir)

    def name_of(image_id: int) -> str:
        name = file_names.get(image_id)
        return name if name is not None else convention(image_id)

    return name_of


# --------------------------------------------------------------------------- merging and splits


def merge_records(*parts: dict[int, ImageRecord]) -> list[ImageRecord]:
    """Join records of the same image from several readers; the inputs are not modified.

    Captions and questions are concatenated in argument order; the path of the first part is kept.

    Returns:
        One record per image_id, sorted by image_id.
    """
    merged: dict[int, ImageRecord] = {}
    path_conflicts = 0
    for part in parts:
        for image_id, record in part.items():
            into = merged.get(image_id)
            if into is None:
                merged[image_id] = ImageRecord(image_id, record.path, list(record.captions), list(record.questions))
                continue
            if into.path != record.path:
                path_conflicts += 1
            into.captions.extend(record.captions)
            into.questions.extend(record.questions)
    if path_conflicts:
        logger.warning("%d merged images had different paths in different files; kept the first", path_conflicts)
    return [merged[image_id] for image_id in sorted(merged)]


_YEARS = ("2014", "2015", "2017")  # COCO 2014 (and VQA test 2015) first, then the 2017 re-split


def _first_file(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def find_split_files(root: Path, split: str) -> SplitFiles:
    """Locate the files of a split in the COCO 2014 + VQAv2 layout.

    Looks for images in ``{root}/{split}2014/`` (or ``{split}2015``, ``{split}2017``, ``{split}``),
    ``annotations/captions_{split}2014.json`` (or 2017), ``v2_OpenEnded_mscoco_{split}2014_questions.json`` and
    ``v2_mscoco_{split}2014_annotations.json`` (or 2015) in ``root`` or ``root/annotations``, and optionally
    ``annotations/instances_{split}2014.json`` (or 2017).

    Raises:
        DataFormatError: Neither a captions nor a questions json exists; the message lists the paths tried.
    """
    root = Path(root)
    annotations = root / "annotations"
    json_dirs = (root, annotations)

    captions_tried = [annotations / f"captions_{split}{year}.json" for year in ("2014", "2017")]
    questions_tried = [
        d / f"v2_OpenEnded_mscoco_{split}{y}_questions.json" for y in ("2014", "2015") for d in json_dirs
    ]
    answers_tried = [d / f"v2_mscoco_{split}{y}_annotations.json" for y in ("2014", "2015") for d in json_dirs]
    instances_tried = [annotations / f"instances_{split}{year}.json" for year in ("2014", "2017")]

    captions_json = _first_file(captions_tried)
    questions_json = _first_file(questions_tried)
    annotations_json = _first_file(answers_tried)
    instances_json = _first_file(instances_tried)

    if captions_json is None and questions_json is None:
        hint = ""
        if split[-4:].isdigit():
            hint = f" (split should be like 'train' or 'val', without the year: got {split!r})"
        tried = "\n  ".join(str(path) for path in captions_tried + questions_tried)
        raise DataFormatError(
            f"{root}: no captions or VQA questions json for split {split!r}{hint}; looked for:\n  {tried}"
        )
    if annotations_json is not None and questions_json is None:
        logger.warning("%s: ignoring %s, which has no questions file next to it", root, annotations_json)
        annotations_json = None

    # Prefer the image folder of the same year as the captions (the 2017 splits hold different images).
    years = ("2017", "2014", "2015") if captions_json is not None and captions_json.stem.endswith("2017") else _YEARS
    dir_candidates = [root / f"{split}{year}" for year in years] + [root / split]
    image_dir = next((path for path in dir_candidates if path.is_dir()), None)
    if image_dir is None:
        image_dir = dir_candidates[0]
        logger.warning(
            "%s: no image folder for split %r (looked for %s)", root, split, ", ".join(map(str, dir_candidates))
        )

    files = SplitFiles(image_dir, captions_json, questions_json, annotations_json, instances_json)
    logger.info("split %r: %s", split, files)
    return files


def read_split(root: Path, split: str) -> list[ImageRecord]:
    """Read and merge the captions and VQA files of a split (see :func:`find_split_files`).

    The captions json's file names are used for the VQA images, so both agree on paths.
    """
    files = find_split_files(root, split)
    parts: list[dict[int, ImageRecord]] = []
    file_names: dict[int, str] | None = None
    if files.captions_json is not None:
        captioned, file_names = _read_coco(files.captions_json, files.image_dir)
        parts.append(captioned)
    if files.questions_json is not None:
        parts.append(read_vqa(files.questions_json, files.annotations_json, files.image_dir, file_names))
    records = merge_records(*parts)
    logger.info("split %r: %d images in %s", split, len(records), files.image_dir)
    return records
