"""Tests for vision_attn.data.readers on tiny hand-written COCO captions and VQAv2 files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vision_attn.data.errors import DataFormatError
from vision_attn.data.readers import (
    ImageRecord,
    QAItem,
    find_split_files,
    merge_records,
    read_coco_captions,
    read_split,
    read_vqa,
)


def _captions() -> dict[str, Any]:
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


def _questions(subtype: str = "val2014") -> dict[str, Any]:
    return {
        "data_subtype": subtype,
        "questions": [
            {"image_id": 9, "question": "What is on the plate?", "question_id": 9000},
            {"image_id": 9, "question": "Is there bread?", "question_id": 9001},
            {"image_id": 42, "question": "How many giraffes?", "question_id": 42000},
        ],
    }


def _answers(qid: int, image_id: int, answer: str, answer_type: str = "other") -> dict[str, Any]:
    return {
        "question_id": qid,
        "image_id": image_id,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
        "multiple_choice_answer": answer,
        "question_type": "what is",
        "answer_type": answer_type,
    }


def _annotations() -> dict[str, Any]:
    return {
        "data_subtype": "val2014",
        "annotations": [_answers(9000, 9, "food"), _answers(9001, 9, "yes", "yes/no"), _answers(42000, 42, "1")],
    }


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


# --------------------------------------------------------------------------- happy paths


def test_read_coco_captions(tmp_path: Path) -> None:
    records = read_coco_captions(_write(tmp_path / "captions_val2014.json", _captions()), tmp_path / "val2014")
    assert sorted(records) == [9, 25, 30]
    assert records[9].path == tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"
    assert records[9].captions == ["A plate of food.", "Broccoli and bread."]  # stripped, file order
    assert records[30].captions == [] and records[30].questions == []


def test_read_vqa_annotated(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "a.json", _annotations())
    records = read_vqa(q, a, tmp_path / "val2014")
    assert sorted(records) == [9, 42]
    first = records[9].questions[0]
    assert first == QAItem(9000, "What is on the plate?", ["food"] * 10, "food", "what is", "other")
    assert [item.question_id for item in records[9].questions] == [9000, 9001]
    assert records[42].questions[0].answer_type == "other"


def test_read_vqa_unannotated(tmp_path: Path) -> None:
    records = read_vqa(_write(tmp_path / "q.json", _questions("test2015")), None, tmp_path / "test2015")
    item = records[42].questions[0]
    assert item.answers == [] and item.answer is None
    assert records[42].path.name == "COCO_test2015_000000000042.jpg"


def test_vqa_file_name_conventions(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", _questions())
    image_dir = tmp_path / "val2014"
    # Nothing on disk: the COCO 2014 convention.
    assert read_vqa(q, None, image_dir)[9].path == image_dir / "COCO_val2014_000000000009.jpg"
    # Only 2017-style names on disk: those are used.
    image_dir.mkdir()
    (image_dir / "000000000009.jpg").write_bytes(b"")
    records = read_vqa(q, None, image_dir)
    assert records[9].path == image_dir / "000000000009.jpg"
    assert records[42].path == image_dir / "000000000042.jpg"
    # 2014 names present win over 2017 names.
    (image_dir / "COCO_val2014_000000000009.jpg").write_bytes(b"")
    assert read_vqa(q, None, image_dir)[9].path.name == "COCO_val2014_000000000009.jpg"
    # An explicit mapping wins; ids it lacks fall back to the convention.
    records = read_vqa(q, None, image_dir, file_names={9: "sub/nine.png"})
    assert records[9].path == image_dir / "sub" / "nine.png"
    assert records[42].path.name == "COCO_val2014_000000000042.jpg"


def test_vqa_without_subtype_needs_names(tmp_path: Path) -> None:
    data = _questions()
    del data["data_subtype"]
    q = _write(tmp_path / "q.json", data)
    with pytest.raises(DataFormatError, match=r"q\.json: missing top-level key 'data_subtype'"):
        read_vqa(q, None, tmp_path)
    records = read_vqa(q, None, tmp_path, file_names={9: "a.jpg", 42: "b.jpg"})
    assert records[42].path == tmp_path / "b.jpg"


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
    _write(tmp_path / "annotations" / "captions_val2014.json", _captions())
    _write(tmp_path / "annotations" / "instances_val2014.json", {})
    vqa_dir = tmp_path / "annotations" if in_annotations else tmp_path
    _write(vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json", _questions())
    _write(vqa_dir / "v2_mscoco_val2014_annotations.json", _annotations())

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


def test_find_split_files_2017_and_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    _write(tmp_path / "annotations" / "captions_train2017.json", _captions())
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


# --------------------------------------------------------------------------- malformed files


def _expect(match: str, call: Any, *args: Any) -> DataFormatError:
    with pytest.raises(DataFormatError, match=match) as info:
        call(*args)
    assert isinstance(info.value, ValueError)
    return info.value


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2014.json"
    path.write_text('{"images": [],\n "annotations": [\n    {"image_id": 1,, }]}')
    _expect(r"captions_val2014\.json: not valid JSON \(line 3 column 20", read_coco_captions, path, tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    _expect(r"nope\.json: file not found", read_coco_captions, tmp_path / "nope.json", tmp_path)


def test_missing_annotations_key(tmp_path: Path) -> None:
    data = _captions()
    del data["annotations"]
    path = _write(tmp_path / "captions_val2014.json", data)
    _expect(r"captions_val2014\.json: missing top-level key 'annotations'", read_coco_captions, path, tmp_path)


def test_top_level_not_object(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.json", [1, 2])
    _expect(r"q\.json: the top level must be an object, got list", read_vqa, path, None, tmp_path)


def test_caption_not_string(tmp_path: Path) -> None:
    data = _captions()
    data["annotations"][2]["caption"] = 7
    path = _write(tmp_path / "captions_val2014.json", data)
    _expect(
        r"captions_val2014\.json: annotations\[2\]\.caption must be a string, got int",
        read_coco_captions,
        path,
        tmp_path,
    )


def test_image_id_bool_and_missing_key(tmp_path: Path) -> None:
    data = _captions()
    data["images"][1]["id"] = True
    path = _write(tmp_path / "c.json", data)
    _expect(r"c\.json: images\[1\]\.id must be an integer, got bool", read_coco_captions, path, tmp_path)
    data = _captions()
    del data["images"][0]["file_name"]
    path = _write(tmp_path / "c.json", data)
    _expect(r"c\.json: images\[0\] is missing key 'file_name'", read_coco_captions, path, tmp_path)


def test_caption_unknown_image_id(tmp_path: Path) -> None:
    data = _captions()
    data["annotations"].append({"image_id": 777, "id": 4, "caption": "orphan"})
    path = _write(tmp_path / "captions_val2014.json", data)
    _expect(r"captions_val2014\.json: annotations\[3\]\.image_id 777 is not among", read_coco_captions, path, tmp_path)


def test_answers_not_a_list(tmp_path: Path) -> None:
    data = _annotations()
    data["annotations"][1]["answers"] = "yes"
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "v2_mscoco_val2014_annotations.json", data)
    _expect(r"annotations\.json: annotations\[1\]\.answers must be a list, got str", read_vqa, q, a, tmp_path)


def test_answer_entry_not_string(tmp_path: Path) -> None:
    data = _annotations()
    data["annotations"][0]["answers"][3]["answer"] = None
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "a.json", data)
    _expect(r"a\.json: annotations\[0\]\.answers\[3\]\.answer must be a string, got null", read_vqa, q, a, tmp_path)


def test_annotation_without_question(tmp_path: Path) -> None:
    data = _annotations()
    data["annotations"].append(_answers(5555, 9, "cat"))
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "a.json", data)
    _expect(r"a\.json: annotations\[3\]\.question_id 5555 has no question in .*q\.json", read_vqa, q, a, tmp_path)


def test_annotation_image_mismatch(tmp_path: Path) -> None:
    data = _annotations()
    data["annotations"][2]["image_id"] = 9
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "a.json", data)
    _expect(r"a\.json: annotations\[2\]\.image_id 9 does not match image_id 42", read_vqa, q, a, tmp_path)


def test_question_without_annotation(tmp_path: Path) -> None:
    data = _annotations()
    del data["annotations"][1]
    q = _write(tmp_path / "q.json", _questions())
    a = _write(tmp_path / "a.json", data)
    _expect(r"a\.json: 1 of 3 questions .* no annotation \(first question_id 9001\)", read_vqa, q, a, tmp_path)


def test_duplicate_question_id(tmp_path: Path) -> None:
    data = _questions()
    data["questions"][1]["question_id"] = 9000
    q = _write(tmp_path / "q.json", data)
    _expect(r"q\.json: questions\[1\]\.question_id 9000 is duplicated", read_vqa, q, None, tmp_path)


def test_subtype_mismatch(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", _questions("train2014"))
    a = _write(tmp_path / "a.json", _annotations())
    _expect(r"a\.json: data_subtype 'val2014' does not match 'train2014'", read_vqa, q, a, tmp_path)
