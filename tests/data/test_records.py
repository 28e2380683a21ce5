"""The json loader every reader checks its files with: unreadable files and the wording of schema errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from json_files import captions, expect_error, write
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from vision_attn.data.coco import read_coco_captions
from vision_attn.data.errors import DataFormatError
from vision_attn.data.records import load_json


class _Entry(TypedDict):
    id: int


class _File(TypedDict):
    entries: list[_Entry]


FILE = TypeAdapter(_File)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2014.json"
    path.write_text('{"images": [],\n "annotations": [\n    {"image_id": 1,, }]}')
    expect_error(r"captions_val2014\.json: not valid JSON \(line 3 column 20", read_coco_captions, path, tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    expect_error(r"nope\.json: file not found", read_coco_captions, tmp_path / "nope.json", tmp_path)


def test_directory_and_not_utf8(tmp_path: Path) -> None:
    expect_error(r"is a directory, expected a json file", load_json, tmp_path, FILE)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"entries": [], "note": "caf\xe9"}')
    expect_error(r"latin1\.json: not valid JSON \(not UTF-8 text", load_json, path, FILE)


def test_utf16_file_is_read_and_checked(tmp_path: Path) -> None:
    """Python's json reads UTF-16/32 files; the loader keeps doing so, schema checks included."""
    path = tmp_path / "captions_val2014.json"
    path.write_bytes(json.dumps(captions()).encode("utf-16"))
    assert read_coco_captions(path, tmp_path)[25].captions == ["A giraffe eating leaves."]
    path.write_bytes(json.dumps({"entries": [{"id": 1}, {"id": "2"}]}).encode("utf-32"))
    expect_error(r"entries\[1\]\.id must be an integer, got str \('2'\)", load_json, path, FILE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"entries": [{"id": 7.0}]}, r"entries\[0\]\.id must be an integer, got float \(7\.0\)$"),
        ({"entries": [[1]]}, r"entries\[0\] must be an object, got list$"),
        ({"entries": {}}, r"top-level key 'entries' must be a list, got dict$"),
        ({"other": []}, r"missing top-level key 'entries'$"),
        ("entries", r"the top level must be an object, got str$"),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path / "f.json", data)
    error = expect_error(message, load_json, path, FILE)
    assert str(error).startswith(f"{path}: ")


def test_first_error_is_reported_and_extra_keys_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "f.json", {"entries": [{"id": 1, "x": None}, {"id": None}, {"id": "3"}], "info": {}})
    with pytest.raises(DataFormatError) as info:
        load_json(path, FILE)
    assert str(info.value) == f"{path}: entries[1].id must be an integer, got null (None)"
    assert load_json(write(path, {"entries": [{"id": 1, "x": None}], "info": {}}), FILE) == {"entries": [{"id": 1}]}
