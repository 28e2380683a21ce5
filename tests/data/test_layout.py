"""Split discovery in the COCO 2014 + VQAv2 layout, explicit files, and merging the readers' records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from json_files import annotations, captions, questions, write

from vision_attn.data.errors import DataFormatError
from vision_attn.data.layout import DataFiles, find_split_files, merge_records, read_files, read_split
from vision_attn.data.records import ImageRecord, QAItem


def test_merge_records() -> None:
    item = QAItem(1, "q?", [], None, "", "")
    a = {2: ImageRecord(2, Path("2.jpg"), captions=["c1"]), 1: ImageRecord(1, Path("1.jpg"), captions=["x"])}
    b = {2: ImageRecord(2, Path("2.jpg"), captions=["c2"], questions=[item])}
    merged = merge_records(a, b)
    assert [r.image_id for r in merged] == [1, 2]
    assert merged[1].captions == ["c1", "c2"] and merged[1].questions == [item]
    assert a[2].captions == ["c1"] and a[2].questions == []  # inputs untouched
    assert merge_records() == []


@pytest.mark.parametrize("in_annotations", [False, True])
def test_find_split_files_and_read_split(tmp_path: Path, in_annotations: bool) -> None:
    (tmp_path / "val2014").mkdir()
    write(tmp_path / "annotations" / "captions_val2014.json", captions())
    write(tmp_path / "annotations" / "instances_val2014.json", {})
    vqa_dir = tmp_path / "annotations" if in_annotations else tmp_path
    write(vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json", questions())
    write(vqa_dir / "v2_mscoco_val2014_annotations.json", annotations())

    files = find_split_files(tmp_path, "val")
    assert files.image_dir == tmp_path / "val2014"
    assert files.captions_json == tmp_path / "annotations" / "captions_val2014.json"
    assert files.questions_json == vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json"
    assert files.annotations_json == vqa_dir / "v2_mscoco_val2014_annotations.json"
    assert files.instances_json == tmp_path / "annotations" / "instances_val2014.json"

    records = read_split(tmp_path, "val")
    assert [r.image_id for r in records] == [9, 25, 30, 42]
    nine = records[0]
    assert nine.captions == ["A plate of food.", "Broccoli and bread."]
    assert [q.answer for q in nine.questions] == ["food", "yes"]
    assert nine.path == tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"
    # the same files given explicitly give the same records
    assert read_files(files.data_files()) == records


def test_find_split_files_2017_and_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    write(tmp_path / "annotations" / "captions_train2017.json", captions())
    files = find_split_files(tmp_path, "train")
    assert files.image_dir == tmp_path / "train"
    assert files.captions_json == tmp_path / "annotations" / "captions_train2017.json"
    assert files.questions_json is None and files.annotations_json is None and files.instances_json is None


def test_find_split_files_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no captions or VQA questions json for split 'val'") as info:
        find_split_files(tmp_path, "val")
    message = str(info.value)
    assert str(tmp_path / "annotations" / "captions_val2014.json") in message
    assert str(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json") in message
    assert str(tmp_path / "annotations" / "v2_OpenEnded_mscoco_val2014_questions.json") in message
    assert "without the year" not in message
    with pytest.raises(DataFormatError, match="without the year"):
        find_split_files(tmp_path, "val2014")


def test_read_files_gives_vqa_images_the_captions_file_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """File names in a subfolder (as a captions json may give them) reach the VQA records whole."""
    data = captions()
    data["images"][0]["file_name"] = "sub/nine.jpg"
    files = DataFiles(
        image_dir=str(tmp_path / "images"),
        captions=str(write(tmp_path / "c.json", data)),
        questions=str(write(tmp_path / "q.json", questions())),
        annotations=str(write(tmp_path / "a.json", annotations())),
    )
    caplog.set_level(logging.WARNING)
    nine = read_files(files)[0]
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # no "different paths" when merging
    assert nine.image_id == 9 and nine.path == tmp_path / "images" / "sub" / "nine.jpg"
    assert len(nine.captions) == 2 and len(nine.questions) == 2


def test_read_files_needs_captions_or_questions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a split needs `captions` or `questions`"):
        read_files(DataFiles(image_dir=str(tmp_path), annotations=str(tmp_path / "a.json")))
