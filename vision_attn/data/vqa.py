"""The VQAv2 reader (questions, and their annotations when there are some), and how VQAv2 names its files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NotRequired

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing only on Python >= 3.12

from vision_attn.data.coco import IMAGE_2014, IMAGE_2017
from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import ImageRecord, QAItem, load_json

logger = logging.getLogger(__name__)

__all__ = ["ANNOTATIONS_FILE", "QUESTIONS_FILE", "read_vqa"]


# How VQAv2 names its files; a subtype is a split and a year, such as "val2014".
QUESTIONS_FILE = "v2_OpenEnded_mscoco_{subtype}_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_{subtype}_annotations.json"


class _Question(TypedDict):
    image_id: int
    question_id: int
    question: str


class _QuestionsFile(TypedDict):
    questions: list[_Question]
    data_subtype: NotRequired[str]  # e.g. "val2014": the COCO 2014 image names need it


class _Answer(TypedDict):
    answer: str


class _Annotation(TypedDict):
    question_id: int
    image_id: int
    answers: list[_Answer]
    multiple_choice_answer: str
    question_type: str
    answer_type: str


class _AnnotationsFile(TypedDict):
    annotations: list[_Annotation]
    data_subtype: NotRequired[str]


_QUESTIONS_FILE = TypeAdapter(_QuestionsFile)
_ANNOTATIONS_FILE = TypeAdapter(_AnnotationsFile)


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
    data = load_json(questions_json, _QUESTIONS_FILE)
    subtype = data.get("data_subtype")

    items: dict[int, QAItem] = {}
    image_of: dict[int, int] = {}  # question_id -> image_id
    for i, q in enumerate(data["questions"]):
        question_id = q["question_id"]
        if question_id in items:
            raise DataFormatError(f"{questions_json}: questions[{i}].question_id {question_id} is duplicated")
        items[question_id] = QAItem(question_id, q["question"].strip(), [], None, "", "")
        image_of[question_id] = q["image_id"]

    if annotations_json is not None:
        _read_annotations(Path(annotations_json), questions_json, subtype, items, image_of)

    image_ids = sorted(set(image_of.values()))
    name_of = _file_namer(questions_json, subtype, image_dir, image_ids, file_names or {})
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


def _read_annotations(
    annotations_json: Path,
    questions_json: Path,
    subtype: str | None,
    items: dict[int, QAItem],
    image_of: dict[int, int],
) -> None:
    """Check the annotations json against the questions and fill the answers of ``items`` in place."""
    data = load_json(annotations_json, _ANNOTATIONS_FILE)
    ann_subtype = data.get("data_subtype")
    if subtype is not None and ann_subtype is not None and ann_subtype != subtype:
        raise DataFormatError(
            f"{annotations_json}: data_subtype {ann_subtype!r} does not match {subtype!r} of {questions_json}"
        )

    annotated: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        question_id, image_id = ann["question_id"], ann["image_id"]
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
        item.answers = [a["answer"].strip() for a in ann["answers"]]
        item.answer = ann["multiple_choice_answer"].strip()
        item.question_type = ann["question_type"]
        item.answer_type = ann["answer_type"]

    missing = [question_id for question_id in items if question_id not in annotated]
    if missing:
        raise DataFormatError(
            f"{annotations_json}: {len(missing)} of {len(items)} questions in {questions_json} have no annotation "
            f"(first question_id {missing[0]}); pass annotations_json=None only for unannotated splits"
        )


def _file_namer(
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

    template: str | None = None
    for image_id in unmapped[:5]:  # the first probe that finds a file decides
        if subtype is not None and (image_dir / IMAGE_2014.format(subtype=subtype, image_id=image_id)).is_file():
            template = IMAGE_2014
            break
        if (image_dir / IMAGE_2017.format(image_id=image_id)).is_file():
            template = IMAGE_2017
            break
    if template is None:
        if subtype is None:
            raise DataFormatError(
                f"{questions_json}: missing top-level key 'data_subtype', needed to build COCO 2014 file names "
                f"such as {IMAGE_2014.format(subtype='train2014', image_id=unmapped[0])} (no COCO 2017 names found "
                f"in {image_dir}); pass file_names instead"
            )
        template = IMAGE_2014
    if template == IMAGE_2017:
        example = template.format(image_id=unmapped[0])
        logger.info("%s: using COCO 2017 file names (%s) in %s", questions_json, example, image_dir)

    def name_of(image_id: int) -> str:
        name = file_names.get(image_id)
        return name if name is not None else template.format(subtype=subtype, image_id=image_id)

    return name_of
