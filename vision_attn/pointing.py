"""The pointing game: does a word's attention map peak inside the box of the object the word names?

For each generated word that names exactly one object of the image (its category, e.g. a shape, or its
`color` attribute when the instances json has one, as the built-in dataset's does), the map's highest patch,
its centre mapped to image pixels, must fall inside that object's box. The chance rate is what a uniformly
random point would score: the box area over the image area (and, for a random patch, the share of patch
centres inside the box).
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vision_attn.attention_maps import AttentionResult, reduce_maps
from vision_attn.data.records import ImageRecord
from vision_attn.inference import Pipeline
from vision_attn.layers.attention import AttentionRecorder
from vision_attn.tasks import vqa_prompt

Box = tuple[float, float, float, float]  # x, y, width, height in pixels (COCO bbox)


@dataclass(frozen=True)
class SceneObject:
    names: frozenset[str]  # words that name it: its category and its colour
    box: Box
    category: str = ""


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[SceneObject, ...]


def read_scenes(instances_json: str | Path) -> dict[int, Scene]:
    """COCO instances json -> image_id -> its size and objects (a category, an optional `color`, a bbox)."""
    data = json.loads(Path(instances_json).read_text())
    category = {c["id"]: c["name"].lower() for c in data["categories"]}
    objects: dict[int, list[SceneObject]] = {}
    for a in data["annotations"]:
        names = {category[a["category_id"]]} | ({a["color"].lower()} if a.get("color") else set())
        obj = SceneObject(frozenset(names), tuple(a["bbox"]), category[a["category_id"]])
        objects.setdefault(a["image_id"], []).append(obj)
    return {im["id"]: Scene(im["width"], im["height"], tuple(objects.get(im["id"], ()))) for im in data["images"]}


def named_object(word: str, scene: Scene) -> SceneObject | None:
    """The one object `word` names ("circle," -> the only circle), or None if it names none or several."""
    word = word.strip(string.punctuation).lower()
    named = [o for o in scene.objects if word in o.names]
    return named[0] if len(named) == 1 else None


def _centre_in_box(i: int, j: int, grid: tuple[int, int], box: Box, width: int, height: int) -> bool:
    """Is the centre of patch (row i, column j) of an image resized to a square grid inside `box`?"""
    x, y = (j + 0.5) * width / grid[1], (i + 0.5) * height / grid[0]
    bx, by, bw, bh = box
    return bx <= x <= bx + bw and by <= y <= by + bh


def peak_in_box(attn: Tensor, box: Box, width: int, height: int) -> bool:
    """attn [h, w] over an image resized to a square: is the centre of its highest patch inside `box`?"""
    i, j = divmod(int(attn.flatten().argmax()), attn.shape[1])
    return _centre_in_box(i, j, tuple(attn.shape), box, width, height)


def box_patches(box: Box, width: int, height: int, grid: tuple[int, int]) -> Tensor:
    """[h * w] bool, row-major: which patches of the square-resized image have their centre inside `box`."""
    return torch.tensor(
        [_centre_in_box(i, j, grid, box, width, height) for i in range(grid[0]) for j in range(grid[1])]
    )


def patch_chance(box: Box, width: int, height: int, grid: tuple[int, int]) -> float:
    """The share of patch centres inside `box`: the score of pointing at a random patch."""
    return box_patches(box, width, height, grid).float().mean().item()


def word_rows(result: AttentionResult, scene: Scene, task: str) -> list[dict[str, Any]]:
    """One row per word naming exactly one object: the chance rates and whether each map points at it.

    Maps: "layer i" (head mean of decoder layer i), "layer mean" (mean over layers), and two word-agnostic
    controls, "control: rollout" (the encoder rollout) and "control: text mean" (the mean map of the text).
    """
    L, _, T, _ = result.raw.shape
    h, w = result.grid
    per_layer = {f"layer {i}": reduce_maps(result.raw, i).view(T, h, w) for i in range(L)}
    per_layer["layer mean"] = reduce_maps(result.raw, "mean").view(T, h, w)
    rows = []
    for word, span in zip(result.words, result.word_tokens, strict=True):
        obj = named_object(word, scene)
        if obj is None:
            continue
        maps = {name: m[span].mean(0) for name, m in per_layer.items()}
        maps["control: rollout"] = result.rollout
        maps["control: text mean"] = per_layer["layer mean"].mean(0)
        bx, by, bw, bh = obj.box
        word = word.strip(string.punctuation).lower()
        rows.append(
            {
                "task": task,
                "kind": "category" if word == obj.category else "color",
                "word": word,
                "box_chance": bw * bh / (scene.width * scene.height),
                "patch_chance": patch_chance(obj.box, scene.width, scene.height, (h, w)),
                "hits": {name: peak_in_box(m, obj.box, scene.width, scene.height) for name, m in maps.items()},
            }
        )
    return rows


def pointing_game(
    pipe: Pipeline,
    records: Sequence[ImageRecord],
    scenes: dict[int, Scene],
    question_types: Iterable[str] = ("color", "shape"),
) -> list[dict[str, Any]]:
    """Caption every record's image and answer its questions of `question_types` (greedy, with attention maps,
    through the pipeline); return `word_rows` of every generated word that names one object of its scene."""
    types = set(question_types)
    batch = [r for r in records if r.image_id in scenes]
    rows: list[dict[str, Any]] = []
    for r, res in zip(batch, pipe.caption_maps([r.path for r in batch]), strict=True):
        rows += word_rows(res, scenes[r.image_id], "caption")
    qs = [(r, q) for r in batch for q in r.questions if q.question_type in types]
    if qs:
        answers = pipe.answer_maps([r.path for r, _ in qs], [q.question for _, q in qs])
        for (r, _), res in zip(qs, answers, strict=True):
            rows += word_rows(res, scenes[r.image_id], "vqa")
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows -> per group (task "caption" or "vqa", word kind "category" or "color", and "all"): n, chance rates,
    and each map's hit rate and its ratio to the box-area chance."""
    groups = {
        "caption": lambda r: r["task"] == "caption",
        "vqa": lambda r: r["task"] == "vqa",
        "category words": lambda r: r["kind"] == "category",
        "color words": lambda r: r["kind"] == "color",
        "all": lambda r: True,
    }
    out: dict[str, Any] = {}
    for task, keep in groups.items():
        sel = [r for r in rows if keep(r)]
        if not sel:
            continue
        n = len(sel)
        chance = sum(r["box_chance"] for r in sel) / n
        out[task] = {
            "n": n,
            "chance_box_area": chance,
            "chance_random_patch": sum(r["patch_chance"] for r in sel) / n,
            "hit_rate": {m: sum(r["hits"][m] for r in sel) / n for m in sel[0]["hits"]},
        }
        out[task]["ratio_to_chance"] = {m: v / chance for m, v in out[task]["hit_rate"].items()}
    return out


def _forms(word: str) -> set[str]:
    """A word as it may name objects: itself and, for a plural, its singular ("circles," -> circles, circle)."""
    word = word.strip(string.punctuation).lower()
    return {word, word[:-1]} if word.endswith("s") else {word}


def named_objects(word: str, scene: Scene) -> list[SceneObject]:
    """Every object `word` names, a plural too ("circles" -> the circles; "red," -> the red objects)."""
    forms = _forms(word)
    return [o for o in scene.objects if forms & o.names]


def question_lookup(pipe: Pipeline, records: Sequence[ImageRecord], scenes: dict[int, Scene]) -> list[dict[str, Any]]:
    """Does the decoder look up in the image what a question's word names? For the first word of each question
    that names some objects of its scene but not all (a colour, a category, or its plural), the cross-attention
    of every layer and head at that word and at each prompt token after it, teacher-forced (no answer is
    generated): the attention mass on the patches of the objects it names and on those of the other objects.

    Returns one row per such question: question_type, word, kind ("category"/"color"), named/other (the share
    of patches each group covers) and mass [L, H, K, 2] (K = prompt tokens from the word to the last; the two
    masses: named, other). Words a tokenizer splits into several pieces are not matched and are left out.
    """
    model, codec = pipe.model, pipe.codec
    grid = model.encoder.grid
    rows: list[dict[str, Any]] = []
    with AttentionRecorder(model.decoder.cross_attns) as rec, pipe.running():
        for r in records:
            scene = scenes.get(r.image_id)
            if scene is None or not r.questions:
                continue
            masks = {o: box_patches(o.box, scene.width, scene.height, grid) for o in scene.objects}  # [N] each
            in_any = torch.stack(list(masks.values())).any(0)
            asked = []  # (question, prompt ids, word's token index, word, its objects' patches)
            for q in r.questions:
                ids = vqa_prompt(codec, q.question)
                for t, i in enumerate(ids):
                    word = codec.tok.decode([i]).strip(string.punctuation + " ").lower()
                    named = named_objects(word, scene) if word else []
                    if 0 < len(named) < len(scene.objects):
                        in_named = torch.stack([masks[o] for o in named]).any(0)
                        if in_named.any() and (in_any & ~in_named).any():
                            asked.append((q, ids, t, word, named, in_named))
                        break  # only the first word that names some objects
            if not asked:
                continue
            # one forward for the image and all its questions, right-padded: causal, so padding changes nothing
            width = max(len(a[1]) for a in asked)
            ids = torch.tensor([a[1] + [codec.pad] * (width - len(a[1])) for a in asked], device=pipe.device)
            image = pipe.preprocess(r.path)[None].to(pipe.device)
            model(image, ids, torch.zeros(len(asked), dtype=torch.long, device=pipe.device))
            weights = torch.stack(rec.weights).float().cpu()  # [L, M, H, T, N]
            for m, (q, prompt, t, word, named, in_named) in enumerate(asked):
                in_other = in_any & ~in_named
                w = weights[:, m, :, t : len(prompt)]  # [L, H, K, N]
                mass = torch.stack([w[..., in_named].sum(-1), w[..., in_other].sum(-1)], dim=-1)  # [L, H, K, 2]
                kind = "category" if any(o.category in _forms(word) for o in named) else "color"
                rows.append(
                    {
                        "question_type": q.question_type,
                        "word": word,
                        "kind": kind,
                        "named": in_named.float().mean().item(),
                        "other": in_other.float().mean().item(),
                        "mass": mass,
                    }
                )
    return rows


def lookup_selectivity(rows: Sequence[dict[str, Any]]) -> Tensor:
    """Rows of `question_lookup` -> [L, H, K] selectivity: mean attention per named-object patch over mean
    attention per other-object patch (1 = no preference; K = the fewest prompt tokens after the word)."""
    k = min(r["mass"].shape[2] for r in rows)
    mass = torch.stack([r["mass"][:, :, :k] for r in rows]).mean(0)  # [L, H, K, 2]
    named = sum(r["named"] for r in rows) / len(rows)
    other = sum(r["other"] for r in rows) / len(rows)
    return (mass[..., 0] / named) / (mass[..., 1] / other).clamp_min(1e-12)
