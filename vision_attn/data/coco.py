"""The COCO captions reader, and how COCO names its files.

Image files are not checked here (a stat per image is slow on big sets); the datasets skip and count
unreadable ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing only on Python >= 3.12

from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import ImageRecord, load_json

logger = logging.getLogger(__name__)

__all__ = [
    "CAPTIONS_FILE",
    "IMAGE_2014",
    "IMAGE_2017",
    "INSTANCES_FILE",
    "read_captions_and_names",
    "read_coco_captions",
]


# How COCO names its files; a subtype is a split and a year, such as "val2014".
CAPTIONS_FILE = "captions_{subtype}.json"  # in annotations/
INSTANCES_FILE = "instances_{subtype}.json"  # in annotations/
IMAGE_2014 = "COCO_{subtype}_{image_id:012d}.jpg"
IMAGE_2017 = "{image_id:012d}.jpg"


class _Image(TypedDict):
    id: int
    file_name: str


class _Caption(TypedDict):
    image_id: int
    caption: str


class _CaptionsFile(TypedDict):
    images: list[_Image]
    annotations: list[_Caption]


_CAPTIONS_FILE = TypeAdapter(_CaptionsFile)


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
    return read_captions_and_names(captions_json, image_dir)[0]


def read_captions_and_names(captions_json: Path, image_dir: Path) -> tuple[dict[int, ImageRecord], dict[int, str]]:
    """:func:`read_coco_captions`, and the file's ``image_id -> file_name`` for the VQA reader of the same split."""
    captions_json, image_dir = Path(captions_json), Path(image_dir)
    data = load_json(captions_json, _CAPTIONS_FILE)

    file_names: dict[int, str] = {}
    for i, image in enumerate(data["images"]):
        if image["id"] in file_names:
            raise DataFormatError(f"{captions_json}: images[{i}].id {image['id']} is duplicated")
        file_names[image["id"]] = image["file_name"]
    records = {image_id: ImageRecord(image_id, image_dir / name) for image_id, name in file_names.items()}

    empty = 0
    for i, ann in enumerate(data["annotations"]):
        record = records.get(ann["image_id"])
        if record is None:
            raise DataFormatError(f"{captions_json}: annotations[{i}].image_id {ann['image_id']} is not among 'images'")
        caption = ann["caption"].strip()
        if caption:
            record.captions.append(caption)
        else:
            empty += 1
    if empty:
        logger.warning("%s: skipped %d empty captions", captions_json, empty)
    logger.info("%s: read %d images with %d captions", captions_json, len(records), len(data["annotations"]) - empty)
    return records, file_names
