"""Scenes: 2-5 non-overlapping shapes in six saturated colours and two sizes, sampled and drawn on a muted
gradient background (anti-aliased by 2x supersampling)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

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

_SUPERSAMPLE = 2


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
