"""What the readers produce (`ImageRecord`, `QAItem`), and the one json loader they all check files with.

File formats are described once, as pydantic `TypedDict` schemas next to each reader (`coco.py`,
`vqa.py`); `load_json` parses and validates a file against one in a single pass and turns the first problem
into a `DataFormatError` naming the file, the entry and the field, e.g.
``/x/captions_train2014.json: annotations[12].caption must be a string, got int (7)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from vision_attn.data.errors import DataFormatError

__all__ = ["ImageRecord", "QAItem", "load_json"]

T = TypeVar("T")


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


def load_json(path: Path, schema: TypeAdapter[T]) -> T:
    """Parse the json file at `path` and check it against `schema`, strictly: json types exactly (a bool is not an
    id, 3.0 is not an integer); keys the schema does not name are ignored.

    Raises:
        DataFormatError: The file is missing, not JSON, or breaks the schema; the message names the file and
            the first wrong field.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a directory, expected a json file") from None
    try:
        return schema.validate_json(raw, strict=True)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        if first["type"] != "json_invalid":
            raise DataFormatError(f"{path}: {_describe(first)}") from None
    # Not UTF-8 JSON: Python's parser reads UTF-16/32 too, and names the line and column of a syntax error.
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None
    try:
        return schema.validate_python(data, strict=True)
    except ValidationError as e:
        raise DataFormatError(f"{path}: {_describe(e.errors(include_url=False)[0])}") from None


_KINDS = {"string_type": "a string", "int_type": "an integer", "list_type": "a list", "dict_type": "an object"}


def _type_name(value: Any) -> str:
    """The json type of a parsed value, for error messages."""
    return "null" if value is None else type(value).__name__


def _where(loc: tuple[int | str, ...]) -> str:
    """('annotations', 3, 'answers', 0) -> 'annotations[3].answers[0]'."""
    return "".join(f"[{part}]" if type(part) is int else f".{part}" for part in loc).lstrip(".")


def _describe(error: Any) -> str:
    """One pydantic error as our message: what is wrong where, and what was found."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    if kind == "missing":
        if len(loc) == 1:
            return f"missing top-level key {loc[0]!r}"
        return f"{_where(loc[:-1])} is missing key {loc[-1]!r}"
    if kind not in _KINDS:
        return f"{_where(loc) or 'the top level'}: {error['msg']}"
    if not loc:
        return f"the top level must be an object, got {_type_name(value)}"
    if len(loc) == 1:
        return f"top-level key {loc[0]!r} must be {_KINDS[kind]}, got {_type_name(value)}"
    if type(loc[-1]) is int:  # an entry of a list
        return f"{_where(loc)} must be {_KINDS[kind]}, got {_type_name(value)}"
    return f"{_where(loc)} must be {_KINDS[kind]}, got {_type_name(value)} ({value!r:.60})"
