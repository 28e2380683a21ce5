"""Tiny hand-written COCO captions and VQAv2 files for the reader tests, and a helper to expect a format error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vision_attn.data.errors import DataFormatError


def captions() -> dict[str, Any]:
    return {
        "info": {},
        "images": [
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 640, "height": 480},
            {"id": 25, "file_name": "COCO_val2014_000000000025.jpg"},
            {"id": 30, "file_name": "COCO_val2014_000000000030.jpg"},
        ],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "  A plate of food. \n"},
            {"image_id": 25, "id": 2, "caption": "A giraffe eating leaves."},
            {"image_id": 9, "id": 3, "caption": "Broccoli and bread."},
        ],
    }


def questions(subtype: str = "val2014") -> dict[str, Any]:
    return {
        "data_subtype": subtype,
        "questions": [
            {"image_id": 9, "question": "What is on the plate?", "question_id": 9000},
            {"image_id": 9, "question": "Is there bread?", "question_id": 9001},
            {"image_id": 42, "question": "How many giraffes?", "question_id": 42000},
        ],
    }


def answers(qid: int, image_id: int, answer: str, answer_type: str = "other") -> dict[str, Any]:
    return {
        "question_id": qid,
        "image_id": image_id,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
        "multiple_choice_answer": answer,
        "question_type": "what is",
        "answer_type": answer_type,
    }


def annotations() -> dict[str, Any]:
    return {
        "data_subtype": "val2014",
        "annotations": [answers(9000, 9, "food"), answers(9001, 9, "yes", "yes/no"), answers(42000, 42, "1")],
    }


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def expect_error(match: str, call: Callable[..., Any], *args: Any) -> DataFormatError:
    with pytest.raises(DataFormatError, match=match) as info:
        call(*args)
    assert isinstance(info.value, ValueError)
    return info.value
