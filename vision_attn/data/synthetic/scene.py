"""Scenes: non-overlapping shapes in saturated colours, sampled as a `SceneSpec` asks (the demo's: 2-5 shapes, six
colours, two sizes) and drawn on a muted gradient background (anti-aliased by 2x supersampling)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")  # the demo's, in the order it samples them
DRAWABLE_SHAPES: tuple[str, ...] = (*SHAPES, "rectangle")
COLORS: dict[str, tuple[int, int, int]] = {  # every colour a scene may use; the demo uses the first six
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 85, 225),
    "yellow": (240, 210, 35),
    "purple": (150, 55, 180),
    "orange": (245, 130, 25),
    "cyan": (20, 195, 205),
    "pink": (245, 120, 195),
}
DEMO_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
RECTANGLE_ASPECT = 0.6  # a rectangle is `extent` wide and this much of it tall: never mistaken for a square
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Obj:
    """One object: its words, its centre (integer pixels) and its width `extent` (its height but for a rectangle)."""

    shape: str
    color: str
    size: str
    cx: int
    cy: int
    extent: int
    position: str

    @property
    def height(self) -> float:
        """Height of the drawn shape in pixels (the width is `extent`)."""
        return self.extent * (RECTANGLE_ASPECT if self.shape == "rectangle" else 1.0)

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, w, h] in pixels."""
        return [self.cx - self.extent / 2, self.cy - self.height / 2, float(self.extent), float(self.height)]

    @property
    def area(self) -> float:
        """Area of the drawn shape in pixels."""
        side = float(self.extent)
        return {"circle": math.pi / 4, "square": 1.0, "rectangle": RECTANGLE_ASPECT}.get(self.shape, 0.5) * side * side


@dataclass(frozen=True)
class SceneSpec:
    """What a scene holds. The defaults are the demo's scenes.

    Args:
        objects: fewest and most objects, both included.
        shapes: the shapes to draw from (names in `DRAWABLE_SHAPES`).
        colors: the colours to draw from (names in `COLORS`).
        sizes: per size word, the smallest and largest box side in pixels of a 128-px image (scaled with the
            image); equal bounds give one side for the word, as in the demo.
        distinct: what no two objects of a scene share: their (colour, shape) pair, their colour, or nothing.
    """

    objects: tuple[int, int] = (2, 5)
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = DEMO_COLORS
    sizes: dict[str, tuple[int, int]] = field(default_factory=lambda: {"small": (18, 18), "large": (30, 30)})
    distinct: Literal["pair", "color", "none"] = "pair"

    def __post_init__(self) -> None:
        lo, hi = self.objects
        if not 1 <= lo <= hi:
            raise ValueError(f"objects={self.objects}: choose (fewest, most) with 1 <= fewest <= most")
        if unknown := [s for s in self.shapes if s not in DRAWABLE_SHAPES]:
            raise ValueError(f"shapes: {unknown} cannot be drawn; choose from {DRAWABLE_SHAPES}")
        if unknown := [c for c in self.colors if c not in COLORS]:
            raise ValueError(f"colors: {unknown} have no RGB value; choose from {tuple(COLORS)} or add them to COLORS")
        if not self.sizes or any(not 0 < a <= b for a, b in self.sizes.values()):
            raise ValueError(
                f"sizes={self.sizes}: give each size word (smallest, largest) with 0 < smallest <= largest"
            )
        room = {"pair": len(self.colors) * len(self.shapes), "color": len(self.colors), "none": hi}[self.distinct]
        if hi > room:
            raise ValueError(f"objects={self.objects}: at most {room} objects can be distinct by {self.distinct!r}")


DEMO_SCENE = SceneSpec()


def position_word(cx: float, cy: float, image_size: int) -> str:
    """The 3x3-grid cell of a point, e.g. "top left" or "center"."""
    col = min(int(3 * cx // image_size), 2)
    row = min(int(3 * cy // image_size), 2)
    return POSITIONS[3 * row + col]


def object_extents(image_size: int, sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    """Smallest and largest box side per size word, scaled from 128 px (demo: 18 and 30 px at 128 px).

    Each word's sides stay at least 2 px above the previous word's, so size words stay distinct in small images.
    """
    out: dict[str, tuple[int, int]] = {}
    floor = 3
    for word, (lo, hi) in (sizes or DEMO_SCENE.sizes).items():
        low = max(floor, round(image_size * lo / 128))
        out[word] = (low, max(low, round(image_size * hi / 128)))
        floor = out[word][1] + 2
    return out


def _words(rng: random.Random, spec: SceneSpec, n: int) -> list[tuple[str, str]]:
    """The (colour, shape) of `n` objects, as distinct as the spec asks."""
    if spec.distinct == "pair":
        return rng.sample([(c, s) for c in spec.colors for s in spec.shapes], n)
    if spec.distinct == "color":
        return [(c, rng.choice(spec.shapes)) for c in rng.sample(spec.colors, n)]
    return [(rng.choice(spec.colors), rng.choice(spec.shapes)) for _ in range(n)]


def _lay_out(rng: random.Random, objects: list[tuple[str, str, str, int]], image_size: int) -> list[Obj] | None:
    """Place (colour, shape, size word, side) objects at random without overlap; None if 100 layouts failed."""
    gap = max(2, round(image_size * 3 / 128))  # min space between boxes
    edge = max(1, round(image_size * 2 / 128))  # min space to the image border
    for _ in range(100):
        objs: list[Obj] = []
        for color, shape, size, e in objects:
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
        if len(objs) == len(objects):
            return objs
    return None


def sample_scene(rng: random.Random, image_size: int, spec: SceneSpec | None = None) -> list[Obj]:
    """Draw the objects of a scene (default: the demo's 2-5 with distinct (colour, shape) pairs) without overlap.

    Sizes too crowded to lay out (many objects, all large) are drawn again, up to 10 times.
    """
    spec = spec or DEMO_SCENE
    extents = object_extents(image_size, spec.sizes)
    n = rng.randint(*spec.objects)
    pairs = _words(rng, spec, n)
    for _ in range(10):
        sizes = [rng.choice(tuple(spec.sizes)) for _ in range(n)]
        # a side is drawn only where its size word has a range, so the demo's random stream is what it always was
        sides = [rng.randint(*extents[s]) if extents[s][0] < extents[s][1] else extents[s][0] for s in sizes]
        objs = _lay_out(rng, [(c, sh, s, e) for (c, sh), s, e in zip(pairs, sizes, sides, strict=True)], image_size)
        if objs is not None:
            return objs
    raise RuntimeError(f"could not place {n} objects (last sides {sides}) in a {image_size}px image")


def outline(obj: Obj, scale: float = 1.0, circle_vertices: int = 24) -> list[tuple[float, float]]:
    """The shape's polygon in pixels times `scale` (a circle becomes a regular polygon)."""
    x, y, h = obj.cx * scale, obj.cy * scale, obj.extent * scale / 2
    if obj.shape in ("square", "rectangle"):
        v = obj.height * scale / 2
        return [(x - h, y - v), (x + h, y - v), (x + h, y + v), (x - h, y + v)]
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


def render_scene(rng: random.Random, image_size: int, spec: SceneSpec | None = None) -> tuple[Image.Image, list[Obj]]:
    """Sample a scene (default: the demo's) and draw it as an RGB image (anti-aliased: 2x supersampling, LANCZOS)."""
    objs = sample_scene(rng, image_size, spec)
    canvas = _background(rng, image_size)
    for o in objs:
        _paint(canvas, o)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB"), objs
