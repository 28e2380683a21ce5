"""The variants of the synthetic set: deterministic, read back by the readers, every kind asked, answers true to
the geometry of the written instances, yes/no balanced, no kind answered by one answer, the VQA-only set loads."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from synthetic_files import files, load

from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.layout import read_split
from vision_attn.data.synthetic import make_synthetic
from vision_attn.data.synthetic.language import Context
from vision_attn.data.synthetic.scene import SceneSpec, sample_scene
from vision_attn.data.synthetic.variants import VARIANTS, Variant, get_variant

NEW = ["shapes64", "relations", "counting"]
N_TRAIN, N_VAL = 8, 4


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each new variant written at its own image size: 8 train + 4 val images."""
    out = {}
    for name in NEW:
        out[name] = tmp_path_factory.mktemp(name)
        make_synthetic(out[name], n_train=N_TRAIN, n_val=N_VAL, seed=0, workers=1, variant=name)
    return out


def _scenes(variant: Variant, n: int = 200) -> list[tuple[list, list]]:
    """`n` scenes of a variant and their questions, sampled in-process (no images drawn)."""
    out = []
    for i in range(n):
        rng = random.Random(f"test-{variant.name}-{i}")
        objs = sample_scene(rng, variant.image_size, variant.scene)
        variant.captions(objs, rng)  # as generation does, so the questions see the same random stream
        out.append((objs, variant.questions(objs, rng)))
    return out


# ---- answers from the instances file alone ----


def _objects(instances: dict) -> dict[int, list[dict]]:
    """Objects per image id from the instances file: words, centre and drawn area from the box and shape."""
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in instances["images"]}
    fill = {"circle": math.pi / 4, "square": 1.0, "rectangle": 1.0, "triangle": 0.5, "diamond": 0.5}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        by_image[ann["image_id"]].append({**ann, "cx": x + w / 2, "cy": y + h / 2, "drawn": fill[ann["shape"]] * w * h})
    return by_image


def _the(objs: list[dict], **words: str) -> dict:
    found = [o for o in objs if all(o[k] == v for k, v in words.items())]
    assert len(found) == 1, f"{words} refers to {len(found)} objects"
    return found[0]


def _ranked(a: dict, objs: list[dict]) -> list[tuple[float, str]]:
    return sorted((math.hypot(o["cx"] - a["cx"], o["cy"] - a["cy"]), o["shape"]) for o in objs if o is not a)


def _answer(q: str, objs: list[dict], size: int, colors: set[str]) -> str:
    yes = {True: "yes", False: "no"}
    if q == "what color is the shape?":
        return _the(objs)["color"]
    if q == "what shape is in the image?":
        return _the(objs)["shape"]
    if m := re.fullmatch(r"is there an? (\w+) in the image\?", q):
        return yes[any(o["shape"] == m[1] for o in objs)]
    if m := re.fullmatch(r"is anything (\w+)\?", q):
        return yes[any(o["color"] == m[1] for o in objs)]
    if m := re.fullmatch(r"is the (\w+) object in the (left|top) half of the image\?", q):
        c = _the(objs, color=m[1])["cx" if m[2] == "left" else "cy"]
        assert abs(c - size / 2) > 2, "asked about an object on the midline"
        return yes[c < size / 2]
    if m := re.fullmatch(r"what is the shape of the (\w+) object\?", q):
        return _the(objs, color=m[1])["shape"]
    if m := re.fullmatch(r"what shape is the object (closest to|farthest from) the (\w+) one\?", q):
        ranked = _ranked(_the(objs, color=m[2]), objs)
        (d0, s0), (d1, s1) = ranked[:2] if m[1] == "closest to" else ranked[::-1][:2]
        assert min(d0, d1) < 0.9 * max(d0, d1), "the answer is barely nearer or farther than the runner-up"
        return s0
    if m := re.fullmatch(r"how many other objects have the same shape as the (\w+) one\?", q):
        a = _the(objs, color=m[1])
        return str(sum(o["shape"] == a["shape"] for o in objs if o is not a))
    if q == "how many shapes are in the picture?":
        return str(len(objs))
    if m := re.fullmatch(r"how many shapes are (\w+)\?", q):
        return str(sum(o["color"] == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+)s can you see\?", q):
        return str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"is the (\w+) (\w+) above the (\w+) (\w+)\?", q):
        a, b = _the(objs, color=m[1], shape=m[2]), _the(objs, color=m[3], shape=m[4])
        assert abs(a["cy"] - b["cy"]) > 5, "above/below asked about objects at about the same height"
        return yes[a["cy"] < b["cy"]]
    if m := re.fullmatch(r"which is larger, the (\w+)(?: shape)? or the (\w+)(?: shape)?\?", q):
        attr = "color" if m[1] in colors else "shape"
        a, b = _the(objs, **{attr: m[1]}), _the(objs, **{attr: m[2]})
        assert max(a["drawn"], b["drawn"]) > 1.5 * min(a["drawn"], b["drawn"]), "sizes too close to call"
        return (a if a["drawn"] > b["drawn"] else b)[attr]
    if q == "what color is the largest shape?":
        first, second = sorted(objs, key=lambda o: -o["drawn"])[:2]
        assert first["drawn"] > 1.2 * second["drawn"], "the largest is barely larger than the runner-up"
        return first["color"]
    raise AssertionError(f"unexpected question {q!r}")


# ---- tests ----


@pytest.mark.parametrize("name", NEW)
def test_written_files_read_back(written: dict[str, Path], name: str) -> None:
    variant, root = VARIANTS[name], written[name]
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        records = read_split(root, split)
        assert len(records) == n and all(r.path.is_file() for r in records)
        for r in records:
            assert len(r.questions) == len({q.question for q in r.questions}) == variant.questions_per_image
            assert {q.question_type for q in r.questions} <= set(variant.question_kinds)
            expected = 0 if variant.caption_style is None else variant.captions_per_image
            assert len(set(r.captions)) == len(r.captions) == expected
        instances = load(root / "annotations" / f"instances_{split}2014.json")
        assert [c["name"] for c in instances["categories"]] == list(variant.scene.shapes)
        assert {(img["width"], img["height"]) for img in instances["images"]} == {(variant.image_size,) * 2}
        lo, hi = variant.scene.objects
        assert all(lo <= len(objs) <= hi for objs in _objects(instances).values())


@pytest.mark.parametrize("name", NEW)
def test_answers_match_the_geometry(written: dict[str, Path], name: str) -> None:
    variant, root = VARIANTS[name], written[name]
    for split in ("train", "val"):
        objs = _objects(load(root / "annotations" / f"instances_{split}2014.json"))
        for r in read_split(root, split):
            for q in r.questions:
                expected = _answer(q.question, objs[r.image_id], variant.image_size, set(variant.scene.colors))
                assert q.answer == expected, q.question
                assert q.answer_type == (
                    "yes/no" if expected in ("yes", "no") else "number" if expected.isdigit() else "other"
                )


@pytest.mark.parametrize("name", NEW)
def test_answers_match_the_geometry_of_sampled_scenes(name: str) -> None:
    """As above, over 200 scenes per variant, so that every kind's answers are checked many times."""
    variant = VARIANTS[name]
    kinds = Counter()
    for objs, questions in _scenes(variant):
        instances = {"images": [{"id": 0}], "annotations": [{"image_id": 0, **vars(o), "bbox": o.bbox} for o in objs]}
        for q in questions:
            assert q.answer == _answer(
                q.question, _objects(instances)[0], variant.image_size, set(variant.scene.colors)
            )
            kinds[q.kind] += 1
    assert set(kinds) == set(variant.question_kinds)


@pytest.mark.parametrize("name", ["relations", "counting"])
def test_captions_name_every_object(written: dict[str, Path], name: str) -> None:
    objs = _objects(load(written[name] / "annotations" / "instances_val2014.json"))
    for r in read_split(written[name], "val"):
        for caption in r.captions:
            assert caption == caption.lower() and caption.endswith(".") and "  " not in caption
            for o in objs[r.image_id]:
                assert f"{o['color']} {o['shape']}" in caption, caption


@pytest.mark.parametrize("name", NEW)
def test_deterministic_per_seed(tmp_path: Path, name: str) -> None:
    make_synthetic(tmp_path / "a", n_train=3, n_val=2, seed=0, workers=1, variant=name)
    make_synthetic(tmp_path / "b", n_train=3, n_val=2, seed=0, workers=2, variant=name)
    make_synthetic(tmp_path / "c", n_train=3, n_val=2, seed=1, workers=1, variant=name)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b, "output depends on the worker count"
    assert any(a[k] != c[k] for k in a if k.endswith(".jpg")), "the seed changes nothing"


@pytest.mark.parametrize("name", NEW)
def test_every_kind_asked_and_none_answered_by_one_answer(name: str) -> None:
    """Every kind is asked; yes/no kinds are balanced; no kind's majority answer is right 60% of the time."""
    variant = VARIANTS[name]
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    for _, questions in _scenes(variant):
        for q in questions:
            answers[q.kind][q.answer] += 1
    assert set(answers) == set(variant.question_kinds)
    for kind, counts in answers.items():
        if set(counts) <= {"yes", "no"}:
            assert 0.35 < counts["yes"] / counts.total() < 0.65, (kind, counts)
        assert counts.most_common(1)[0][1] / counts.total() < 0.6, (kind, counts)


def test_relations_objects_are_named_by_colour() -> None:
    for objs, questions in _scenes(VARIANTS["relations"], 50):
        assert len(objs) == 6 and len({o.color for o in objs}) == 6
        assert len(questions) == 20


def test_shapes64_is_vqa_only_and_loads_for_training(written: dict[str, Path], tmp_path: Path) -> None:
    """No captions; the DataModule reads it with tasks "vqa" and with the default "both" (VQA texts only)."""
    root = written["shapes64"]
    assert load(root / "annotations" / "captions_train2014.json")["annotations"] == []
    for tasks in ("vqa", "both"):
        dm = VisionAttnDataModule(
            root=str(root),
            tasks=tasks,
            image_size=32,
            batch_size=4,
            num_workers=0,
            tokenizer_out=str(tmp_path / f"{tasks}.json"),
        )
        dm.prepare_data()
        dm.setup("fit")
        assert len(dm.train_records) == N_TRAIN and not any(r.captions for r in dm.train_records)
        batch = next(iter(dm.train_dataloader()))
        assert "caption" not in batch and batch["vqa"] and batch["images"].shape == (4, 3, 32, 32)


def test_unknown_variant_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant='nope': unknown; choose from demo, shapes64, relations, counting"):
        make_synthetic(tmp_path, n_train=1, n_val=1, variant="nope")
    assert get_variant("counting").image_size == 96


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"question_kinds": ("color", "nope")}, "unknown question kinds"),
        ({"caption_style": "nope"}, "caption_style 'nope'"),
        ({"questions_per_image": 100}, "questions per image"),
        ({"scene": SceneSpec(objects=(1, 10), distinct="none")}, "at most 9 objects"),
    ],
)
def test_variant_checks_its_fields(kwargs: dict, message: str) -> None:
    fields = {"name": "x", "summary": "", "image_size": 64, "scene": SceneSpec(), "question_kinds": ("color",)}
    with pytest.raises(ValueError, match=message):
        Variant(**{**fields, "questions_per_image": 2, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shapes": ("hexagon",)}, "cannot be drawn"),
        ({"colors": ("teal",)}, "no RGB value"),
        ({"objects": (3, 2)}, "fewest"),
        ({"objects": (2, 7), "colors": ("red", "blue"), "distinct": "color"}, "at most 2 objects"),
    ],
)
def test_scene_spec_checks_its_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SceneSpec(**kwargs)


def test_context_follows_the_variant() -> None:
    assert VARIANTS["counting"].context() == Context(
        96, VARIANTS["counting"].scene.colors, VARIANTS["counting"].scene.shapes
    )
    assert VARIANTS["demo"].context(64) == Context(64)
