"""From a split description to records: a folder in the COCO 2014 + VQAv2 layout, or explicit files.

Both ways end in :func:`read_files`, which reads the captions and VQA files of one split and merges them per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vision_attn.data.coco import CAPTIONS_FILE, INSTANCES_FILE, read_captions_and_names
from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import ImageRecord
from vision_attn.data.vqa import ANNOTATIONS_FILE, QUESTIONS_FILE, read_vqa

logger = logging.getLogger(__name__)

__all__ = ["DataFiles", "SplitFiles", "find_split_files", "merge_records", "read_files", "read_split"]


@dataclass
class DataFiles:
    """Explicit files of one split (instead of `root`).

    Args:
        image_dir: folder of the images.
        captions: COCO captions json (`annotations/captions_*.json`), optional.
        questions: VQAv2 questions json, optional.
        annotations: VQAv2 annotations json (answers), needed with `questions` for training.
    """

    image_dir: str
    captions: str | None = None
    questions: str | None = None
    annotations: str | None = None


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split found by :func:`find_split_files`."""

    image_dir: Path
    captions_json: Path | None = None
    questions_json: Path | None = None
    annotations_json: Path | None = None
    instances_json: Path | None = None

    def data_files(self) -> DataFiles:
        """The files :func:`read_files` reads."""

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return DataFiles(
            str(self.image_dir), text(self.captions_json), text(self.questions_json), text(self.annotations_json)
        )


def read_files(files: DataFiles) -> list[ImageRecord]:
    """Read and merge the captions and VQA files of a split, one record per image, sorted by image_id.

    The captions json's file names are used for the VQA images, so both agree on paths.

    Raises:
        ValueError: Neither `captions` nor `questions` is given.
        DataFormatError: A file is missing or malformed (see :func:`read_coco_captions` and :func:`read_vqa`).
    """
    if not files.captions and not files.questions:
        raise ValueError(f"{files}: a split needs `captions` or `questions` (or both)")
    image_dir = Path(files.image_dir)
    parts: list[dict[int, ImageRecord]] = []
    file_names: dict[int, str] | None = None
    if files.captions:
        captioned, file_names = read_captions_and_names(Path(files.captions), image_dir)
        parts.append(captioned)
    if files.questions:
        annotations = Path(files.annotations) if files.annotations else None
        parts.append(read_vqa(Path(files.questions), annotations, image_dir, file_names))
    records = merge_records(*parts)
    logger.info("%d images in %s", len(records), image_dir)
    return records


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

    captions_tried = [annotations / CAPTIONS_FILE.format(subtype=f"{split}{y}") for y in ("2014", "2017")]
    questions_tried = [d / QUESTIONS_FILE.format(subtype=f"{split}{y}") for y in ("2014", "2015") for d in json_dirs]
    answers_tried = [d / ANNOTATIONS_FILE.format(subtype=f"{split}{y}") for y in ("2014", "2015") for d in json_dirs]
    instances_tried = [annotations / INSTANCES_FILE.format(subtype=f"{split}{y}") for y in ("2014", "2017")]

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
    """Read and merge the captions and VQA files of a split found by :func:`find_split_files`."""
    return read_files(find_split_files(root, split).data_files())
