"""The small synthetic set the writer and generator tests share, and helpers to read it."""

from __future__ import annotations

import json
from pathlib import Path

from vision_attn.data.synthetic import make_synthetic

N_TRAIN, N_VAL, SIZE = 12, 6, 64


def make(out: Path, seed: int = 0, workers: int = 1) -> dict[str, int]:
    return make_synthetic(out, n_train=N_TRAIN, n_val=N_VAL, seed=seed, image_size=SIZE, workers=workers)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
