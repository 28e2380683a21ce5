"""The annotation files of a split, exactly as COCO 2014 and VQAv2 ship them: captions and instances (with object
boxes) under ``annotations/``, questions and annotations (ten answers each) at the top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vision_attn.data.coco import CAPTIONS_FILE, INSTANCES_FILE
from vision_attn.data.synthetic.language import Question
from vision_attn.data.synthetic.scene import SHAPES, Obj, outline
from vision_attn.data.vqa import ANNOTATIONS_FILE, QUESTIONS_FILE

_DATE = "2014-01-01 00:00:00"  # fixed, so files are byte-identical across runs
_INFO = {
    "description": "vision-attn synthetic shapes, in the MS-COCO 2014 / VQAv2 layout",
    "url": "",
    "version": "1.0",
    "year": 2014,
    "contributor": "vision-attn",
    "date_created": "2014/01/01",
}
_LICENSE = {"url": "", "id": 1, "name": "synthetic, public domain"}


@dataclass(frozen=True)
class Example:
    """One rendered image: its id and file name, its objects and the texts about it."""

    image_id: int
    file_name: str
    objs: list[Obj]
    captions: list[str]
    questions: list[Question]


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")  # dumps uses the C encoder, json.dump does not


def write_split(
    out: Path, split: str, examples: list[Example], image_size: int, shapes: tuple[str, ...] = SHAPES
) -> None:
    """Write the COCO captions/instances and VQAv2 questions/annotations files of one split (``{split}2014``).

    Args:
        out: the dataset folder; ``annotations/`` must exist in it.
        split: "train" or "val".
        examples: the split's images in id order.
        image_size: side of the square images in pixels.
        shapes: the instance categories, in id order (the variant's shapes; default the demo's).

    A split without captions (a VQA-only variant) still gets a captions file, with its images and an empty list of
    annotations (as COCO's image-info files list test images without captions), so that readers find the split's
    image file names where they look for them.
    """
    subtype = f"{split}2014"
    images = [
        {
            "id": ex.image_id,
            "file_name": ex.file_name,
            "width": image_size,
            "height": image_size,
            "license": 1,
            "date_captured": _DATE,
        }
        for ex in examples
    ]
    header = {"info": _INFO, "licenses": [_LICENSE], "images": images}
    captions = [
        {"id": ex.image_id * 10 + k, "image_id": ex.image_id, "caption": c}
        for ex in examples
        for k, c in enumerate(ex.captions)
    ]
    _dump({**header, "annotations": captions}, out / "annotations" / CAPTIONS_FILE.format(subtype=subtype))

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(shapes)]
    instances = [
        {
            "id": ex.image_id * 10 + j,
            "image_id": ex.image_id,
            "category_id": shapes.index(o.shape) + 1,
            "segmentation": [[round(v, 2) for point in outline(o) for v in point]],
            "area": round(o.area, 2),
            "bbox": o.bbox,
            "iscrowd": 0,
            "color": o.color,
            "size": o.size,
            "shape": o.shape,
        }
        for ex in examples
        for j, o in enumerate(ex.objs)
    ]
    _dump(
        {**header, "annotations": instances, "categories": categories},
        out / "annotations" / INSTANCES_FILE.format(subtype=subtype),
    )

    vqa_license = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
    questions = [
        {"image_id": ex.image_id, "question": q.question, "question_id": ex.image_id * 100 + k}
        for ex in examples
        for k, q in enumerate(ex.questions)
    ]
    _dump(
        {
            "info": _INFO,
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": vqa_license,
            "data_subtype": subtype,
            "questions": questions,
        },
        out / QUESTIONS_FILE.format(subtype=subtype),
    )
    answers = [
        {
            "question_type": q.kind,
            "multiple_choice_answer": q.answer,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(q.answers)],
            "image_id": ex.image_id,
            "answer_type": q.answer_type,
            "question_id": ex.image_id * 100 + k,
        }
        for ex in examples
        for k, q in enumerate(ex.questions)
    ]
    _dump(
        {"info": _INFO, "license": vqa_license, "data_subtype": subtype, "data_type": "mscoco", "annotations": answers},
        out / ANNOTATIONS_FILE.format(subtype=subtype),
    )
