"""The json files of the synthetic set: the COCO 2014 / VQAv2 layout, and answers and captions true to the scene."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from synthetic_files import N_TRAIN, N_VAL, SIZE, load, make

from vision_attn.data.layout import read_split
from vision_attn.data.synthetic.language import QUESTION_KINDS, Question
from vision_attn.data.synthetic.scene import COLORS, POSITIONS, SHAPES, Obj
from vision_attn.data.synthetic.writer import Example, write_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make(out)
    return out


def _objects(instances: dict) -> dict[int, list[dict]]:
    """Objects per image id, re-derived from the instances file: centre, colour, shape, size."""
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in instances["images"]}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        by_image[ann["image_id"]].append({**ann, "cx": x + w / 2, "cy": y + h / 2})
    return by_image


def _position(cx: float, cy: float, width: int, height: int) -> str:
    return POSITIONS[3 * min(int(3 * cy // height), 2) + min(int(3 * cx // width), 2)]


def _the(objs: list[dict], **words: str) -> dict:
    """The single object matching `words`; fails if the reference is ambiguous or empty."""
    found = [o for o in objs if all(o[k] == v for k, v in words.items())]
    assert len(found) == 1, f"{words} refers to {len(found)} objects"
    return found[0]


def _answer(question: str, objs: list[dict], size: int) -> str:
    """Answer a question from the instance annotations alone."""
    if m := re.fullmatch(r"what color is the object closest to the (\w+) (\w+)\?", question):
        a = _the(objs, color=m[1], shape=m[2])
        dist = sorted((math.hypot(o["cx"] - a["cx"], o["cy"] - a["cy"]), o["color"]) for o in objs if o is not a)
        assert len(dist) >= 2 and dist[0][0] < 0.9 * dist[1][0], "nearest object is not clearly nearest"
        return dist[0][1]
    if m := re.fullmatch(r"what color is the (?:(small|large) )?(\w+)\?", question):
        return _the(objs, shape=m[2], **({"size": m[1]} if m[1] else {}))["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return _the(objs, color=m[1])["shape"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        return _the(objs, color=m[1], shape=m[2])["size"]
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if question == "how many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return str(sum(o["color"] == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        o = _the(objs, color=m[1], shape=m[2])
        return _position(o["cx"], o["cy"], size, size)
    if m := re.fullmatch(r"is the (\w+) (\w+) left of the (\w+) (\w+)\?", question):
        a, b = _the(objs, color=m[1], shape=m[2]), _the(objs, color=m[3], shape=m[4])
        assert abs(a["cx"] - b["cx"]) > 1, "left/right asked about objects at the same x"
        return "yes" if a["cx"] < b["cx"] else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_layout(dataset: Path) -> None:
    for split, n, first_id in (("train", N_TRAIN, 1), ("val", N_VAL, 1_000_000)):
        sub = f"{split}2014"
        captions = load(dataset / "annotations" / f"captions_{sub}.json")
        instances = load(dataset / "annotations" / f"instances_{sub}.json")
        questions = load(dataset / f"v2_OpenEnded_mscoco_{sub}_questions.json")
        answers = load(dataset / f"v2_mscoco_{sub}_annotations.json")

        assert {"info", "licenses", "images", "annotations"} <= captions.keys()
        assert {"info", "licenses", "images", "annotations", "categories"} <= instances.keys()
        assert questions["task_type"] == "Open-Ended" and questions["data_type"] == "mscoco"
        assert questions["data_subtype"] == answers["data_subtype"] == sub
        assert {"info", "license"} <= questions.keys() & answers.keys()

        images = captions["images"]
        assert images == instances["images"]
        ids = [img["id"] for img in images]
        assert len(ids) == n and len(set(ids)) == n and min(ids) == first_id
        for img in images:
            assert img["file_name"] == f"COCO_{sub}_{img['id']:012d}.jpg"
            with Image.open(dataset / sub / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
                assert (img["width"], img["height"]) == im.size
        assert len(list((dataset / sub).iterdir())) == n

        caps = Counter(a["image_id"] for a in captions["annotations"])
        assert set(caps) == set(ids) and set(caps.values()) == {5}
        assert len({a["id"] for a in captions["annotations"]}) == len(captions["annotations"])
        for image_id in ids:
            texts = [a["caption"] for a in captions["annotations"] if a["image_id"] == image_id]
            assert len(set(texts)) == 5, "captions of an image must be worded differently"

        assert [c["name"] for c in instances["categories"]] == list(SHAPES)
        for ann in instances["annotations"]:
            assert ann["image_id"] in caps and ann["iscrowd"] == 0 and len(ann["bbox"]) == 4
            assert ann["color"] in COLORS and ann["shape"] == SHAPES[ann["category_id"] - 1]
            assert ann["size"] in ("small", "large") and 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3]
        assert len({a["id"] for a in instances["annotations"]}) == len(instances["annotations"])

        qs = {q["question_id"]: q for q in questions["questions"]}
        assert len(qs) == len(questions["questions"]) == 8 * n
        assert Counter(q["image_id"] for q in qs.values()) == {i: 8 for i in ids}
        anns = {a["question_id"]: a for a in answers["annotations"]}
        assert anns.keys() == qs.keys()
        for qid, ann in anns.items():
            assert ann["image_id"] == qs[qid]["image_id"]
            assert ann["question_type"] in QUESTION_KINDS
            assert [a["answer_id"] for a in ann["answers"]] == list(range(1, 11))
            assert all(a["answer_confidence"] == "yes" for a in ann["answers"])
            assert ann["multiple_choice_answer"] == Counter(a["answer"] for a in ann["answers"]).most_common(1)[0][0]
            expected_type = {"exist": "yes/no", "relation_left": "yes/no", "count": "number"}
            assert ann["answer_type"] == expected_type.get(ann["question_type"], "other")
    train_ids = {a["image_id"] for a in load(dataset / "v2_mscoco_train2014_annotations.json")["annotations"]}
    val_ids = {a["image_id"] for a in load(dataset / "v2_mscoco_val2014_annotations.json")["annotations"]}
    assert not train_ids & val_ids


def test_answers_match_instances(dataset: Path) -> None:
    kinds = Counter()
    for sub in ("train2014", "val2014"):
        objs = _objects(load(dataset / "annotations" / f"instances_{sub}.json"))
        questions = {
            q["question_id"]: q for q in load(dataset / f"v2_OpenEnded_mscoco_{sub}_questions.json")["questions"]
        }
        for ann in load(dataset / f"v2_mscoco_{sub}_annotations.json")["annotations"]:
            question = questions[ann["question_id"]]["question"]
            expected = _answer(question, objs[ann["image_id"]], SIZE)
            assert ann["multiple_choice_answer"] == expected, question
            kinds[ann["question_type"]] += 1
    assert set(kinds) == set(QUESTION_KINDS)


def test_captions_mention_every_object(dataset: Path) -> None:
    for sub in ("train2014", "val2014"):
        objs = _objects(load(dataset / "annotations" / f"instances_{sub}.json"))
        for ann in load(dataset / "annotations" / f"captions_{sub}.json")["annotations"]:
            caption = ann["caption"]
            assert caption == caption.lower() and caption.endswith(".") and "  " not in caption
            for o in objs[ann["image_id"]]:
                assert f"{o['color']} {o['shape']}" in caption, caption


def test_written_files_read_back(tmp_path: Path) -> None:
    """What the writer writes is what the readers read: the same captions, questions and answers per image."""
    square = Obj("square", "red", "large", 20, 20, 12, "top left")
    question = Question("color", "what color is the square?", ("red",) * 9 + ("orange",))
    examples = [
        Example(7, "seven.jpg", [square], ["a large red square.", "a red square."], [question]),
        Example(9, "nine.jpg", [square], ["one square."], []),
    ]
    (tmp_path / "annotations").mkdir()
    write_split(tmp_path, "val", examples, image_size=64)
    seven, nine = read_split(tmp_path, "val")
    assert (seven.image_id, nine.image_id) == (7, 9)
    assert seven.path == tmp_path / "val2014" / "seven.jpg"
    assert seven.captions == ["a large red square.", "a red square."] and nine.captions == ["one square."]
    (item,) = seven.questions
    assert (item.question, item.answer, item.answers) == (question.question, "red", list(question.answers))
    assert (item.question_type, item.answer_type) == ("color", "other")
    assert nine.questions == []
