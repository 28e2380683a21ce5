"""The COCO captions reader on tiny hand-written files: records, and every malformed field named."""

from __future__ import annotations

from pathlib import Path

from json_files import captions, expect_error, write

from vision_attn.data.coco import read_coco_captions


def test_read_coco_captions(tmp_path: Path) -> None:
    records = read_coco_captions(write(tmp_path / "captions_val2014.json", captions()), tmp_path / "val2014")
    assert sorted(records) == [9, 25, 30]
    assert records[9].path == tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"
    assert records[9].captions == ["A plate of food.", "Broccoli and bread."]  # stripped, file order
    assert records[30].captions == [] and records[30].questions == []


def test_missing_annotations_key(tmp_path: Path) -> None:
    data = captions()
    del data["annotations"]
    path = write(tmp_path / "captions_val2014.json", data)
    expect_error(r"captions_val2014\.json: missing top-level key 'annotations'", read_coco_captions, path, tmp_path)


def test_caption_not_string(tmp_path: Path) -> None:
    data = captions()
    data["annotations"][2]["caption"] = 7
    path = write(tmp_path / "captions_val2014.json", data)
    expect_error(
        r"captions_val2014\.json: annotations\[2\]\.caption must be a string, got int",
        read_coco_captions,
        path,
        tmp_path,
    )


def test_image_id_bool_and_missing_key(tmp_path: Path) -> None:
    data = captions()
    data["images"][1]["id"] = True
    path = write(tmp_path / "c.json", data)
    expect_error(r"c\.json: images\[1\]\.id must be an integer, got bool", read_coco_captions, path, tmp_path)
    data = captions()
    del data["images"][0]["file_name"]
    path = write(tmp_path / "c.json", data)
    expect_error(r"c\.json: images\[0\] is missing key 'file_name'", read_coco_captions, path, tmp_path)


def test_caption_unknown_image_id(tmp_path: Path) -> None:
    data = captions()
    data["annotations"].append({"image_id": 777, "id": 4, "caption": "orphan"})
    path = write(tmp_path / "captions_val2014.json", data)
    expect_error(
        r"captions_val2014\.json: annotations\[3\]\.image_id 777 is not among", read_coco_captions, path, tmp_path
    )


def test_duplicate_image_id(tmp_path: Path) -> None:
    data = captions()
    data["images"][2]["id"] = 9
    path = write(tmp_path / "c.json", data)
    expect_error(r"c\.json: images\[2\]\.id 9 is duplicated", read_coco_captions, path, tmp_path)
