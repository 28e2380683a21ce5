"""The question kinds of the variants beyond the demo (`ASKERS` holds them all, the demo's too).

Every asker computes its answers from the objects' words and geometry, and leaves out what a person could answer
two ways: a reference that fits more than one object, a centre within a few pixels of the midline or of the other
object's height, a nearest or farthest object barely nearer or farther than the runner-up, sizes too close to call.
Yes/no kinds offer their yes and no questions in equal measure; counts are digits.
"""

from __future__ import annotations

import math
import random

from vision_attn.data.synthetic.language import DEMO_ASKERS, Asker, Context, is_unique, with_article
from vision_attn.data.synthetic.scene import Obj

CLEARLY_NEARER = 0.85  # nearest/farthest: the runner-up's distance differs from the answer's by at least 15%
CLEARLY_LARGER = 1.6  # "which is larger": the larger area is at least this many times the smaller
CLEARLY_LARGEST = 1.25  # "the largest object": its area is at least this many times the runner-up's
PRESENT_BIAS = 0.75  # count questions name a colour or shape in the scene this often, so answers are rarely 0


def _margin(ctx: Context) -> float:
    """Pixels a centre must clear a midline or another centre by to be on one side of it (4 px at 128 px)."""
    return max(2.0, ctx.image_size * 4 / 128)


def _yes_or_no(yes: list[tuple[str, str]], no: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """The yes questions or the no questions, each half the time (the other where one side has none)."""
    if yes and no:
        return yes if rng.random() < 0.5 else no
    return yes or no


# ---- one object: shapes64 ----


def _ask_single_color(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [("what color is the shape?", objs[0].color)] if len(objs) == 1 else []


def _ask_single_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [("what shape is in the image?", objs[0].shape)] if len(objs) == 1 else []


def _ask_has_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    present = {o.shape for o in objs}
    yes = [(f"is there {with_article(s)} in the image?", "yes") for s in ctx.shapes if s in present]
    no = [(f"is there {with_article(s)} in the image?", "no") for s in ctx.shapes if s not in present]
    return _yes_or_no(yes, no, rng)


def _ask_has_color(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    present = {o.color for o in objs}
    yes = [(f"is anything {c}?", "yes") for c in ctx.colors if c in present]
    no = [(f"is anything {c}?", "no") for c in ctx.colors if c not in present]
    return _yes_or_no(yes, no, rng)


# ---- objects named by their colour alone: relations ----


def _named(objs: list[Obj]) -> list[Obj]:
    """The objects whose colour names them."""
    return [o for o in objs if is_unique(objs, color=o.color)]


def _halves(objs: list[Obj], ctx: Context, axis: str, half: str) -> list[tuple[str, str]]:
    """ "is the X object in the <half> half of the image?" for each named object clear of the midline on `axis`."""
    mid, m = ctx.image_size / 2, _margin(ctx)
    return [
        (f"is the {o.color} object in the {half} half of the image?", "yes" if getattr(o, axis) < mid else "no")
        for o in _named(objs)
        if abs(getattr(o, axis) - mid) > m
    ]


def _ask_left_half(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return _halves(objs, ctx, "cx", "left")


def _ask_top_half(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return _halves(objs, ctx, "cy", "top")


def _ask_shape_of(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [(f"what is the shape of the {o.color} object?", o.shape) for o in _named(objs)]


def _by_distance(a: Obj, objs: list[Obj]) -> list[tuple[float, Obj]]:
    """The other objects, nearest first, with their centre distance to `a`."""
    return sorted(((math.hypot(b.cx - a.cx, b.cy - a.cy), b) for b in objs if b is not a), key=lambda t: t[0])


def _ask_closest_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    out = []
    for a in _named(objs):
        ranked = _by_distance(a, objs)
        if len(ranked) >= 2 and ranked[0][0] < CLEARLY_NEARER * ranked[1][0]:
            out.append((f"what shape is the object closest to the {a.color} one?", ranked[0][1].shape))
    return out


def _ask_farthest_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    out = []
    for a in _named(objs):
        ranked = _by_distance(a, objs)
        if len(ranked) >= 2 and ranked[-2][0] < CLEARLY_NEARER * ranked[-1][0]:
            out.append((f"what shape is the object farthest from the {a.color} one?", ranked[-1][1].shape))
    return out


def _ask_same_shape_count(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [
        (
            f"how many other objects have the same shape as the {a.color} one?",
            str(sum(b.shape == a.shape for b in objs if b is not a)),
        )
        for a in _named(objs)
    ]


# ---- repeated colours and shapes: counting ----


def _ask_count_all(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [("how many shapes are in the picture?", str(len(objs)))]


def _ask_count_color(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    color = rng.choice([o.color for o in objs] if rng.random() < PRESENT_BIAS else list(ctx.colors))
    return [(f"how many shapes are {color}?", str(sum(o.color == color for o in objs)))]


def _ask_count_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    shape = rng.choice([o.shape for o in objs] if rng.random() < PRESENT_BIAS else list(ctx.shapes))
    return [(f"how many {shape}s can you see?", str(sum(o.shape == shape for o in objs)))]


def _described(objs: list[Obj]) -> list[Obj]:
    """The objects their colour and shape together name."""
    return [o for o in objs if is_unique(objs, color=o.color, shape=o.shape)]


def _ask_above(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    m = 2 * _margin(ctx)  # twice the midline's: two objects side by side a few pixels apart are neither above
    # both orders of every pair, so exactly half the questions are answered yes
    return [
        (f"is the {a.color} {a.shape} above the {b.color} {b.shape}?", "yes" if a.cy < b.cy else "no")
        for a in _described(objs)
        for b in _described(objs)
        if a is not b and abs(a.cy - b.cy) > m
    ]


def _ask_larger(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    out = []
    for attr in ("color", "shape"):  # name the two by the word each alone has; the answer is that word
        named = [o for o in objs if is_unique(objs, **{attr: getattr(o, attr)})]
        for i, a in enumerate(named):
            for b in named[i + 1 :]:
                big, small = (a, b) if a.area >= b.area else (b, a)
                if big.area >= CLEARLY_LARGER * small.area:
                    x, y = (
                        (getattr(a, attr), getattr(b, attr))
                        if rng.random() < 0.5
                        else (getattr(b, attr), getattr(a, attr))
                    )
                    noun = " shape" if attr == "color" else ""
                    out.append((f"which is larger, the {x}{noun} or the {y}{noun}?", getattr(big, attr)))
    return out


def _ask_largest_color(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    if len(objs) < 2:
        return []
    first, second = sorted(objs, key=lambda o: o.area, reverse=True)[:2]
    if first.area < CLEARLY_LARGEST * second.area:
        return []
    return [("what color is the largest shape?", first.color)]


ASKERS: dict[str, Asker] = {
    **DEMO_ASKERS,
    "single_color": _ask_single_color,
    "single_shape": _ask_single_shape,
    "has_shape": _ask_has_shape,
    "has_color": _ask_has_color,
    "left_half": _ask_left_half,
    "top_half": _ask_top_half,
    "shape_of": _ask_shape_of,
    "closest_shape": _ask_closest_shape,
    "farthest_shape": _ask_farthest_shape,
    "same_shape_count": _ask_same_shape_count,
    "count_all": _ask_count_all,
    "count_color": _ask_count_color,
    "count_shape": _ask_count_shape,
    "above": _ask_above,
    "larger": _ask_larger,
    "largest_color": _ask_largest_color,
}
