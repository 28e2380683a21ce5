"""Caption styles of the variants beyond the demo, each worded unlike the demo's templates (`CAPTION_STYLES` holds
them all, the demo's too). A style gives `n` differently worded captions of a scene.

"relations" names every object's colour, shape and place and relates neighbours ("below it", "right of it");
"counting" groups the objects by colour and shape with their numbers ("two red circles").
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from itertools import pairwise

from vision_attn.data.synthetic.language import NUMBER_WORDS, join_phrases, make_captions, with_article
from vision_attn.data.synthetic.scene import POSITIONS, Obj

CaptionStyle = Callable[[list[Obj], random.Random, int], list[str]]  # (objects, rng, n) -> n captions

# the 3x3 cell of a centre, in fewer words than the demo's "at the top left" / "in the center": six objects fit
# the demo's 48 caption tokens
_AT = {p: f"at {p}" for p in POSITIONS if p != "center"} | {"center": "in the middle"}
_BIG = {"small": "little", "large": "big"}  # other size words than the demo's
_ROW = {"top": "top row", "": "middle row", "bottom": "bottom row"}
_COLUMN = {"left": "left", "": "center", "right": "right"}


def _pick(templates: list[str], rng: random.Random, n: int) -> list[str]:
    if not 1 <= n <= len(templates):
        raise ValueError(f"n={n} captions asked for; choose 1..{len(templates)}")
    return rng.sample(templates, n)


def _cell(o: Obj) -> tuple[str, str]:
    """(row word, column word) of an object's 3x3 cell; "" for the middle row or column."""
    words = o.position.split()
    row = words[0] if words[0] in ("top", "bottom") else ""
    col = words[-1] if words[-1] in ("left", "right") else ""
    return row, col


def _relation(a: Obj, b: Obj) -> str:
    """Where `b` is from `a` along the axis they are further apart on (never zero: objects do not overlap)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "right of it" if dx > 0 else "left of it"
    return "below it" if dy > 0 else "above it"


def relations_captions(objs: list[Obj], rng: random.Random, n: int = 5) -> list[str]:
    """`n` captions naming every object's colour and shape, and its 3x3 cell, or (in one) its place relative to
    the object named before it ("above it a red circle")."""
    count = NUMBER_WORDS[len(objs)] if len(objs) < len(NUMBER_WORDS) else str(len(objs))
    shuffled = rng.sample(objs, len(objs))
    by_x = sorted(objs, key=lambda o: (o.cx, o.cy))
    by_y = sorted(objs, key=lambda o: (o.cy, o.cx))
    first = objs[0]
    chain = [f"{with_article(first.color)} {first.shape} {_AT[first.position]}"]
    chain += [f"{_relation(a, b)} {with_article(b.color)} {b.shape}" for a, b in pairwise(objs)]
    rows = []
    for row in ("top", "", "bottom"):
        here = sorted((o for o in objs if _cell(o)[0] == row), key=lambda o: o.cx)
        if here:
            rows.append(f"{_ROW[row]}: " + ", ".join(f"{o.color} {o.shape} {_COLUMN[_cell(o)[1]]}" for o in here))
    templates = [
        f"{count} shapes: " + ", ".join(f"{with_article(o.color)} {o.shape} {_AT[o.position]}" for o in shuffled) + ".",
        "; ".join(chain) + ".",
        "left to right: " + ", ".join(f"{o.color} {o.shape} {_AT[o.position]}" for o in by_x) + ".",
        "; ".join(rows) + ".",
        ", ".join(f"{_AT[o.position]} {with_article(o.color)} {o.shape}" for o in shuffled[::-1]) + ".",
    ]
    if len({o.color for o in objs}) == len(objs):  # true of every relations scene; said only where it is true
        templates.append(
            f"{count} objects, each a different color: "
            + join_phrases([f"{o.color} {o.shape} {_AT[o.position]}" for o in by_y])
            + "."
        )
    return _pick(templates, rng, n)


def _group(objs: list[Obj]) -> str:
    """Objects grouped by colour and shape with their numbers, groups in order of their first object: "two red
    circles, a blue square and ..."."""
    groups = Counter((o.color, o.shape) for o in objs)
    return join_phrases(
        [
            f"{with_article(color)} {shape}" if k == 1 else f"{NUMBER_WORDS[k]} {color} {shape}s"
            for (color, shape), k in groups.items()
        ]
    )


def counting_captions(objs: list[Obj], rng: random.Random, n: int = 5) -> list[str]:
    """`n` captions naming every object's colour and shape, grouped with their numbers; some by size or row."""
    total = "a single shape" if len(objs) == 1 else f"{NUMBER_WORDS[len(objs)]} shapes in all"
    shuffled = rng.sample(objs, len(objs))
    by_area = sorted(objs, key=lambda o: -o.area)
    thirds = [
        f"in the {name} third {_group([o for o in shuffled if _cell(o)[0] == row])}"
        for row, name in (("top", "top"), ("", "middle"), ("bottom", "bottom"))
        if any(_cell(o)[0] == row for o in objs)
    ]
    templates = [
        f"{total}: {_group(shuffled)}.",
        f"counted: {_group(sorted(objs, key=lambda o: (o.color, o.shape)))}.",
        "biggest first, " + ", ".join(f"{_BIG[o.size]} {o.color} {o.shape}" for o in by_area) + ".",
        "; ".join(thirds) + ".",
        f"{_group(sorted(objs, key=lambda o: (o.cx, o.cy)))}, from left to right.",
        f"this picture has {_group(shuffled)}.",
    ]
    return _pick(templates, rng, n)


CAPTION_STYLES: dict[str, CaptionStyle] = {
    "demo": make_captions,
    "relations": relations_captions,
    "counting": counting_captions,
}
