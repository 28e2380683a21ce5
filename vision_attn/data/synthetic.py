"""A built-in synthetic dataset written in the exact on-disk layout of MS-COCO 2014 + VQAv2.

Each image shows 2-5 non-overlapping shapes (circle, square, triangle, diamond) in six saturated colours and two
sizes on a muted gradient background. Every image gets five captions naming every object and eight VQA questions
(one of each kind in `QUESTION_KINDS` where its precondition holds). Everything about an image is drawn from
`random.Random(f"{seed}-{split}-{index}")`, so the output is byte-identical for a seed whatever the worker count.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 85, 225),
    "yellow": (240, 210, 35),
    "purple": (150, 55, 180),
    "orange": (245, 130, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
QUESTION_KINDS: tuple[str, ...] = (
    "color", "shape", "size", "exist", "count", "position", "relation_left", "relation_closest",
)  # fmt: skip
ANSWER_TYPES: dict[str, str] = {"exist": "yes/no", "relation_left": "yes/no", "count": "number"}  # else "other"
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
CAPTIONS_PER_IMAGE = 5
QUESTIONS_PER_IMAGE = 8
VAL_ID_OFFSET = 1_000_000  # image ids: train 1..n_train, val 1_000_000.. (unique across splits, like COCO)

_SUPERSAMPLE = 2
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
class Obj:
    """One object: its words, its centre (integer pixels) and the side of its square bounding box."""

    shape: str
    color: str
    size: str
    cx: int
    cy: int
    extent: int
    position: str

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, w, h] in pixels."""
        return [self.cx - self.extent / 2, self.cy - self.extent / 2, float(self.extent), float(self.extent)]

    @property
    def area(self) -> float:
        """Area of the drawn shape in pixels."""
        side = float(self.extent)
        return {"circle": math.pi / 4, "square": 1.0}.get(self.shape, 0.5) * side * side


@dataclass(frozen=True)
class Question:
    """A VQA question with its ten annotator answers."""

    kind: str
    question: str
    answers: tuple[str, ...]

    @property
    def answer(self) -> str:
        """The most common annotator answer (VQAv2's `multiple_choice_answer`)."""
        return Counter(self.answers).most_common(1)[0][0]

    @property
    def answer_type(self) -> str:
        """VQAv2's answer type: "yes/no", "number" or "other"."""
        return ANSWER_TYPES.get(self.kind, "other")


def position_word(cx: float, cy: float, image_size: int) -> str:
    """The 3x3-grid cell of a point, e.g. "top left" or "center"."""
    col = min(int(3 * cx // image_size), 2)
    row = min(int(3 * cy // image_size), 2)
    return POSITIONS[3 * row + col]


def object_extents(image_size: int) -> dict[str, int]:
    """Bounding-box side per size word: about 18 and 30 px at 128 px, scaled with the image."""
    small = max(3, round(image_size * 18 / 128))
    return {"small": small, "large": max(small + 2, round(image_size * 30 / 128))}


def sample_scene(rng: random.Random, image_size: int) -> list[Obj]:
    """Draw 2-5 objects with distinct (colour, shape) pairs at non-overlapping positions."""
    extents = object_extents(image_size)
    gap = max(2, round(image_size * 3 / 128))  # min space between boxes
    edge = max(1, round(image_size * 2 / 128))  # min space to the image border
    n = rng.randint(2, 5)
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    sizes = [rng.choice(SIZES) for _ in range(n)]
    for _ in range(100):
        objs: list[Obj] = []
        for (color, shape), size in zip(pairs, sizes, strict=True):
            e = extents[size]
            lo, hi = (e + 1) // 2 + edge, image_size - (e + 1) // 2 - edge
            for _ in range(50):
                cx, cy = rng.randint(lo, hi), rng.randint(lo, hi)
                # boxes are separated along x or y by at least `gap` (doubled to stay in integers)
                if all(
                    2 * abs(cx - o.cx) >= e + o.extent + 2 * gap or 2 * abs(cy - o.cy) >= e + o.extent + 2 * gap
                    for o in objs
                ):
                    objs.append(Obj(shape, color, size, cx, cy, e, position_word(cx, cy, image_size)))
                    break
            else:
                break  # no room left: lay the whole scene out again
        if len(objs) == n:
            return objs
    raise RuntimeError(f"could not place {n} objects in a {image_size}px image")


def outline(obj: Obj, scale: float = 1.0, circle_vertices: int = 24) -> list[tuple[float, float]]:
    """The shape's polygon in pixels times `scale` (a circle becomes a regular polygon)."""
    x, y, h = obj.cx * scale, obj.cy * scale, obj.extent * scale / 2
    if obj.shape == "square":
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if obj.shape == "triangle":
        return [(x, y - h), (x + h, y + h), (x - h, y + h)]
    if obj.shape == "diamond":
        return [(x, y - h), (x + h, y), (x, y + h), (x - h, y)]
    angles = (2 * math.pi * k / circle_vertices for k in range(circle_vertices))
    return [(x + h * math.cos(a), y + h * math.sin(a)) for a in angles]


def _muted(rng: random.Random, brightness: float) -> np.ndarray:
    """A grey-ish colour: every channel within 18 of `brightness`."""
    return np.array([brightness + rng.uniform(-18, 18) for _ in range(3)], dtype=np.float32)


def _background(rng: random.Random, image_size: int) -> np.ndarray:
    """A linear gradient between two muted colours plus mild pixel noise, float32 (S, S, 3) in [0, 255]."""
    b0 = rng.uniform(85, 165)
    b1 = min(max(b0 + rng.choice((-1, 1)) * rng.uniform(25, 55), 70), 185)
    c0, c1 = _muted(rng, b0), _muted(rng, b1)
    angle = rng.uniform(0, 2 * math.pi)
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    xs = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    t = math.cos(angle) * xs[None, :] + math.sin(angle) * xs[:, None]  # (S, S)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + t[..., None] * (c1 - c0)  # (S, S, 3)
    img += noise_rng.integers(-4, 5, img.shape, dtype=np.int8)
    return img


def _paint(canvas: np.ndarray, obj: Obj) -> None:
    """Alpha-composite one object onto `canvas` (S, S, 3) in place, drawn 2x supersampled in its own tile.

    Only the tile around the object is supersampled, so the background noise stays sharp and rendering is cheap.
    """
    size = canvas.shape[0]
    half = (obj.extent + 1) // 2 + 3  # room for the LANCZOS kernel's support around the shape
    x0, y0 = max(obj.cx - half, 0), max(obj.cy - half, 0)
    x1, y1 = min(obj.cx + half, size), min(obj.cy + half, size)
    tile = Image.new("RGBA", (_SUPERSAMPLE * (x1 - x0), _SUPERSAMPLE * (y1 - y0)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    fill = (*COLORS[obj.color], 255)
    x, y = _SUPERSAMPLE * (obj.cx - x0), _SUPERSAMPLE * (obj.cy - y0)  # centre in tile pixels
    # PIL fills both end pixels of a span: pull right/bottom vertices in by one so the shape is `extent` wide
    if obj.shape == "circle":
        h = _SUPERSAMPLE * obj.extent // 2
        draw.ellipse((x - h, y - h, x + h - 1, y + h - 1), fill=fill)
    else:
        ox, oy = _SUPERSAMPLE * x0, _SUPERSAMPLE * y0
        points = [(px - ox, py - oy) for px, py in outline(obj, _SUPERSAMPLE)]
        draw.polygon([(px - (px > x), py - (py > y)) for px, py in points], fill=fill)
    # PIL resizes RGBA with premultiplied alpha, so edge pixels keep the object's colour
    small = np.asarray(tile.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), dtype=np.float32)
    alpha = small[..., 3:] / 255.0  # (h, w, 1)
    region = canvas[y0:y1, x0:x1]
    region += alpha * (small[..., :3] - region)


def render_scene(rng: random.Random, image_size: int) -> tuple[Image.Image, list[Obj]]:
    """Sample a scene and draw it as an RGB image (objects anti-aliased by 2x supersampling and LANCZOS)."""
    objs = sample_scene(rng, image_size)
    canvas = _background(rng, image_size)
    for o in objs:
        _paint(canvas, o)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB"), objs


def _where(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def _a(word: str) -> str:
    """The indefinite article with its word: "a red", "an orange"."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _listing(objs: list[Obj], with_position: bool = True) -> str:
    return _join(
        [f"a {o.size} {o.color} {o.shape}" + (f" {_where(o.position)}" if with_position else "") for o in objs]
    )


def make_captions(objs: list[Obj], rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` differently worded captions, each naming every object's size, colour and shape."""
    shuffled = rng.sample(objs, len(objs))
    by_x = sorted(objs, key=lambda o: (o.cx, o.cy))
    by_y = sorted(objs, key=lambda o: (o.cy, o.cx))
    by_size = sorted(objs, key=lambda o: (o.size != "large", o.cy, o.cx))
    templates = [
        f"{_listing(shuffled)}.",
        f"there are {NUMBER_WORDS[len(objs)]} objects: {_listing(shuffled)}.",
        f"from left to right: {_listing(by_x, with_position=False)}.",
        f"from top to bottom: {_listing(by_y, with_position=False)}.",
        f"the image shows {_listing(by_y)}.",
        f"we can see {_listing(by_size)}.",
        f"a picture of {_listing(by_x)}.",
    ]
    if not 1 <= n <= len(templates):
        raise ValueError(f"n={n} captions asked for; choose 1..{len(templates)}")
    return rng.sample(templates, n)


def _unique(objs: list[Obj], **words: str) -> bool:
    return sum(all(getattr(o, k) == v for k, v in words.items()) for o in objs) == 1


def _ask_color(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    out = []
    for o in objs:
        if _unique(objs, shape=o.shape) and rng.random() < 0.7:
            out.append((f"what color is the {o.shape}?", o.color))
        elif _unique(objs, shape=o.shape, size=o.size):
            out.append((f"what color is the {o.size} {o.shape}?", o.color))
    return out


def _ask_shape(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    return [(f"what shape is the {o.color} object?", o.shape) for o in objs if _unique(objs, color=o.color)]


def _ask_size(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    return [(f"what size is the {o.color} {o.shape}?", o.size) for o in objs]


def _ask_position(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    return [(f"where is the {o.color} {o.shape}?", o.position) for o in objs]


def _ask_exist(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    if rng.random() < 0.5:
        return [(f"is there {_a(o.color)} {o.shape}?", "yes") for o in objs]
    present = [(o.color, o.shape) for o in objs]
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    # colour and shape both in the scene but not together: only binding them tells the answer
    binding = [(c, s) for c, s in absent if any(o.color == c for o in objs) and any(o.shape == s for o in objs)]
    pool = binding if binding and rng.random() < 0.5 else absent
    return [(f"is there {_a(c)} {s}?", "no") for c, s in pool]


def _ask_count(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    r = rng.random()
    if r < 0.2:
        return [("how many objects are there?", str(len(objs)))]
    if r < 0.6:  # mostly colours in the scene, so answers are not mostly zero
        color = rng.choice([o.color for o in objs] if rng.random() < 0.7 else list(COLORS))
        return [(f"how many {color} objects are there?", str(sum(o.color == color for o in objs)))]
    shape = rng.choice([o.shape for o in objs] if rng.random() < 0.7 else list(SHAPES))
    return [(f"how many {shape}s are there?", str(sum(o.shape == shape for o in objs)))]


def _ask_relation_left(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    min_dx = max(2, round(image_size * 4 / 128))
    return [
        (f"is the {a.color} {a.shape} left of the {b.color} {b.shape}?", "yes" if a.cx < b.cx else "no")
        for a in objs
        for b in objs
        if a is not b and abs(a.cx - b.cx) > min_dx
    ]


def _ask_relation_closest(objs: list[Obj], rng: random.Random, image_size: int) -> list[tuple[str, str]]:
    if len(objs) < 3:
        return []
    out = []
    for a in objs:
        others = sorted((math.hypot(b.cx - a.cx, b.cy - a.cy), i) for i, b in enumerate(objs) if b is not a)
        if others[0][0] < 0.85 * others[1][0]:  # the nearest is clearly nearer than the runner-up
            out.append((f"what color is the object closest to the {a.color} {a.shape}?", objs[others[0][1]].color))
    return out


_ASKERS = {
    "color": _ask_color,
    "shape": _ask_shape,
    "size": _ask_size,
    "exist": _ask_exist,
    "count": _ask_count,
    "position": _ask_position,
    "relation_left": _ask_relation_left,
    "relation_closest": _ask_relation_closest,
}


def _annotate(kind: str, answer: str, rng: random.Random) -> tuple[str, ...]:
    """Ten annotator answers; for counts, 1 or 2 annotators sometimes spell the number out."""
    answers = [answer] * 10
    if kind == "count" and rng.random() < 0.3:
        for i in rng.sample(range(10), rng.choice((1, 2))):
            answers[i] = NUMBER_WORDS[int(answer)]
    return tuple(answers)


def make_questions(
    objs: list[Obj], rng: random.Random, image_size: int, n: int = QUESTIONS_PER_IMAGE
) -> list[Question]:
    """`n` distinct questions: each kind in turn, a random other kind where a kind's precondition fails."""
    plan = [QUESTION_KINDS[i % len(QUESTION_KINDS)] for i in range(n)]
    out: list[Question] = []
    asked: set[str] = set()  # membership only: never iterated, so hash order cannot leak into the output
    for _ in range(1000):
        if len(out) == n:
            return out
        kind = plan.pop(0) if plan else rng.choice(QUESTION_KINDS)
        candidates = [qa for qa in _ASKERS[kind](objs, rng, image_size) if qa[0] not in asked]
        if candidates:
            question, answer = rng.choice(candidates)
            asked.add(question)
            out.append(Question(kind, question, _annotate(kind, answer, rng)))
    raise RuntimeError(f"could not ask {n} distinct questions about {objs}")


@dataclass(frozen=True)
class _Example:
    image_id: int
    file_name: str
    objs: list[Obj]
    captions: list[str]
    questions: list[Question]


def _image_id(split: str, index: int) -> int:
    return index + 1 if split == "train" else VAL_ID_OFFSET + index


def _write_example(task: tuple[str, str, int, int, int]) -> _Example:
    """Render image `index` of `split`, save its JPEG and return its annotations (runs in a worker)."""
    out, split, index, seed, image_size = task
    rng = random.Random(f"{seed}-{split}-{index}")
    image, objs = render_scene(rng, image_size)
    captions = make_captions(objs, rng)
    questions = make_questions(objs, rng, image_size)
    image_id = _image_id(split, index)
    file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
    image.save(Path(out) / f"{split}2014" / file_name, "JPEG", quality=95)
    return _Example(image_id, file_name, objs, captions, questions)


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")  # dumps uses the C encoder, json.dump does not


def _write_split(out: Path, split: str, examples: list[_Example], image_size: int) -> None:
    """Write the COCO captions/instances and VQAv2 questions/annotations files of one split."""
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
    _dump({**header, "annotations": captions}, out / "annotations" / f"captions_{subtype}.json")

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    instances = [
        {
            "id": ex.image_id * 10 + j,
            "image_id": ex.image_id,
            "category_id": SHAPES.index(o.shape) + 1,
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
        out / "annotations" / f"instances_{subtype}.json",
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
        out / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
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
        out / f"v2_mscoco_{subtype}_annotations.json",
    )


def make_synthetic(
    out: str | Path,
    n_train: int = 20000,
    n_val: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    workers: int | None = None,
) -> dict[str, int]:
    """Write the dataset under `out`; return counts (images/captions/questions per split). Deterministic for a seed.

    Args:
        out: output folder; created if missing. Existing files of the same names are overwritten.
        n_train: number of training images (ids 1..n_train).
        n_val: number of validation images (ids from 1_000_000).
        seed: dataset seed; image `i` of a split depends only on (seed, split, i).
        image_size: side of the square images in pixels (>= 32).
        workers: rendering processes; default min(cpu count, 4). 1 renders in this process.

    Returns:
        {"train_images", "train_captions", "train_questions", "val_images", "val_captions", "val_questions"}.
    """
    if not 0 <= n_train < VAL_ID_OFFSET:
        raise ValueError(f"n_train={n_train}: choose 0 <= n_train < {VAL_ID_OFFSET} (val image ids start there)")
    if n_val < 0:
        raise ValueError(f"n_val={n_val}: choose n_val >= 0")
    if image_size < 32:
        raise ValueError(f"image_size={image_size}: choose image_size >= 32 so small objects stay recognisable")
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers}: choose workers >= 1 (or None for the default)")

    out = Path(out)
    start = time.perf_counter()
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    splits = {"train": n_train, "val": n_val}
    pool = multiprocessing.Pool(workers) if workers > 1 and n_train + n_val > 1 else None
    counts: dict[str, int] = {}
    try:
        for split, n in splits.items():
            (out / f"{split}2014").mkdir(exist_ok=True)
            tasks = [(str(out), split, i, seed, image_size) for i in range(n)]
            # imap keeps task order, so the result never depends on which worker rendered what
            chunksize = max(1, min(64, n // (8 * workers)))
            results = pool.imap(_write_example, tasks, chunksize) if pool else map(_write_example, tasks)
            examples = list(tqdm(results, total=n, desc=f"synthetic {split}2014", unit="img"))
            _write_split(out, split, examples, image_size)
            counts[f"{split}_images"] = n
            counts[f"{split}_captions"] = sum(len(ex.captions) for ex in examples)
            counts[f"{split}_questions"] = sum(len(ex.questions) for ex in examples)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    logger.info(
        "wrote synthetic COCO/VQAv2 dataset to %s: %d train / %d val images, %d captions, %d questions in %.1fs",
        out,
        n_train,
        n_val,
        counts["train_captions"] + counts["val_captions"],
        counts["train_questions"] + counts["val_questions"],
        time.perf_counter() - start,
    )
    return counts
