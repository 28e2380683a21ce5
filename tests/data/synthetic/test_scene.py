"""Scenes: distinct, non-overlapping objects, drawn in their own colours."""

from __future__ import annotations

import random

from vision_attn.data.synthetic.scene import COLORS, render_scene, sample_scene

SIZE = 64


def test_rendered_colours_match_objects() -> None:
    for i in range(20):
        image, objs = render_scene(random.Random(i), SIZE)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        for o in objs:
            pixel = image.getpixel((o.cx, o.cy))
            assert max(abs(p - q) for p, q in zip(pixel, COLORS[o.color], strict=True)) < 40, (o, pixel)


def test_scenes_have_distinct_non_overlapping_objects() -> None:
    for i in range(200):
        rng = random.Random(i)
        objs = sample_scene(rng, 128)
        assert 2 <= len(objs) <= 5
        assert len({(o.color, o.shape) for o in objs}) == len(objs)
        for a in objs:
            for b in objs:
                if a is not b:  # boxes never overlap
                    ax, ay, aw, ah = a.bbox
                    bx, by, bw, bh = b.bbox
                    assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
