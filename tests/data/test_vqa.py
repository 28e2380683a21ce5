"""The VQAv2 reader on tiny hand-written files: questions, answers, file names, and every malformed field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from json_files import annotations, answers, expect_error, questions, write

from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import QAItem
from vision_attn.data.vqa import read_vqa


def test_read_vqa_annotated(tmp_path: Path) -> None:
    q = write(tmp_path / "q.json", questions())
    a = write(tmp_path / "a.json", annotations())
    records = read_vqa(q, a, tmp_path / "val2014")
    assert sorted(records) == [9, 42]
    first = records[9].questions[0]
    assert first == QAItem(9000, "What is on the plate?", ["food"] * 10, "food", "what is", "other")
    assert [item.question_id for item in records[9].questions] == [9000, 9001]
    assert records[42].questions[0].answer_type == "other"


def test_read_vqa_unannotated(tmp_path: Path) -> None:
    records = read_vqa(write(tmp_path / "q.json", questions("test2015")), None, tmp_path / "test2015")
    item = records[42].questions[0]
    assert item.answers == [] and item.answer is None
    assert records[42].path.name == "COCO_test2015_000000000042.jpg"


def test_vqa_file_name_conventions(tmp_path: Path) -> None:
    q = write(tmp_path / "q.json", questions())
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
    data = questions()
    del data["data_subtype"]
    q = write(tmp_path / "q.json", data)
    with pytest.raises(DataFormatError, match=r"q\.json: missing top-level key 'data_subtype'"):
        read_vqa(q, None, tmp_path)
    records = read_vqa(q, None, tmp_path, file_names={9: "a.jpg", 42: "b.jpg"})
    assert records[42].path == tmp_path / "b.jpg"


# --------------------------------------------------------------------------- malformed files


def test_top_level_not_object(tmp_path: Path) -> None:
    path = write(tmp_path / "q.json", [1, 2])
    expect_error(r"q\.json: the top level must be an object, got list", read_vqa, path, None, tmp_path)


def test_subtype_not_string(tmp_path: Path) -> None:
    data = questions()
    data["data_subtype"] = 2014
    q = write(tmp_path / "q.json", data)
    expect_error(r"q\.json: top-level key 'data_subtype' must be a string, got int", read_vqa, q, None, tmp_path)


def test_answers_not_a_list(tmp_path: Path) -> None:
    data = annotations()
    data["annotations"][1]["answers"] = "yes"
    q = write(tmp_path / "q.json", questions())
    a = write(tmp_path / "v2_mscoco_val2014_annotations.json", data)
    expect_error(r"annotations\.json: annotations\[1\]\.answers must be a list, got str", read_vqa, q, a, tmp_path)


def _set(path: tuple, value: object):
    """An edit of the annotations json: set data[path[0]][path[1]]... to `value`."""

    def edit(data: dict) -> None:
        *head, last = path
        for key in head:
            data = data[key]
        data[last] = value

    return edit


DAMAGED_ANNOTATIONS = {  # name: (edit of the annotations json, the error it must give)
    "answer entry not a string": (
        _set(("annotations", 0, "answers", 3, "answer"), None),
        r"a\.json: annotations\[0\]\.answers\[3\]\.answer must be a string, got null",
    ),
    "annotation without question": (
        lambda data: data["annotations"].append(answers(5555, 9, "cat")),
        r"a\.json: annotations\[3\]\.question_id 5555 has no question in .*q\.json",
    ),
    "annotation image mismatch": (
        _set(("annotations", 2, "image_id"), 9),
        r"a\.json: annotations\[2\]\.image_id 9 does not match image_id 42",
    ),
    "question annotated twice": (
        lambda data: data["annotations"].append(answers(9001, 9, "no", "yes/no")),
        r"a\.json: annotations\[3\]\.question_id 9001 is annotated twice",
    ),
    "question without annotation": (
        lambda data: data["annotations"].pop(1),
        r"a\.json: 1 of 3 questions .* no annotation \(first question_id 9001\)",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGED_ANNOTATIONS))
def test_damaged_annotations_name_the_entry(tmp_path: Path, name: str) -> None:
    damage, error = DAMAGED_ANNOTATIONS[name]
    data = annotations()
    damage(data)
    q = write(tmp_path / "q.json", questions())
    a = write(tmp_path / "a.json", data)
    expect_error(error, read_vqa, q, a, tmp_path)


def test_duplicate_question_id(tmp_path: Path) -> None:
    data = questions()
    data["questions"][1]["question_id"] = 9000
    q = write(tmp_path / "q.json", data)
    expect_error(r"q\.json: questions\[1\]\.question_id 9000 is duplicated", read_vqa, q, None, tmp_path)


def test_subtype_mismatch(tmp_path: Path) -> None:
    q = write(tmp_path / "q.json", questions("train2014"))
    a = write(tmp_path / "a.json", annotations())
    expect_error(r"a\.json: data_subtype 'val2014' does not match 'train2014'", read_vqa, q, a, tmp_path)
