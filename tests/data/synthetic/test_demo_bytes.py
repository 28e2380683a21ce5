"""The demo set stays byte for byte what it was before variants existed, so earlier results remain comparable.

The digests below were taken from the code of commit 6aede3c (before `variants.py`), with Pillow 13.0.0 and
numpy 2.4.6:

    vision-attn make-synthetic --out DIR --train 8 --val 4 --seed 0 --image-size 128
    sha256 of each json file; one sha256 over every JPEG (its path relative to DIR, a NUL byte, its bytes), in
    sorted path order; and the same over all files of make_synthetic(DIR, 6, 3, seed=3, image_size=64).

A change of the JPEG digests alone, with the json digests unchanged, means Pillow's JPEG encoder changed: take them
again from that commit with the new Pillow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vision_attn.data.synthetic import make_synthetic

JSON_SHA256 = {
    "annotations/captions_train2014.json": "0d8700511919480b010c8626e7585a3c9585b1f7296d746d741d85e3d2611321",
    "annotations/captions_val2014.json": "348f3ab959485bbe99954fccc964a8d7149be1bc129adb094a94f4e6fcadbdce",
    "annotations/instances_train2014.json": "e4da633d925c184c62c2cf78d4a0239cdf90978708ba0b3872f384d0b4371e6f",
    "annotations/instances_val2014.json": "31d573de1ff52858e6d05273c37e4dba0fc8b6dae99dc98f5795ea635d930c9e",
    "v2_OpenEnded_mscoco_train2014_questions.json": "e029bbe9a754342fad1d3e85ddc84f68a9761c459895f8e09c89d1e9924429dd",
    "v2_OpenEnded_mscoco_val2014_questions.json": "04f0d391280d9991f41a7bdc5e8b70e16b797b962d3a9bc861d6b5ae53b586d1",
    "v2_mscoco_train2014_annotations.json": "0d024226e159b668b44da594af78cd2d3e5de1f55c4f3c456afaf88768e8b703",
    "v2_mscoco_val2014_annotations.json": "b8d12cee74add42f8a5aeb14e7c02d4bda8f5675eba17efa9a7c81c0db13ceac",
}
JPEG_SHA256 = "ad07f5cbed28bf397df1caf2794bfc3427945c434d0ad8af89204b7778a13b42"
ALL_64PX_SHA256 = "353bf68f6e73980d89867e1eb1f044b98c86ca3f661631f4c5fa73cecedd3469"


def _digest(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_demo_files_are_unchanged(tmp_path: Path) -> None:
    make_synthetic(tmp_path, n_train=8, n_val=4, seed=0, image_size=128, workers=1)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    jsons = {
        str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.suffix == ".json"
    }
    assert jsons == JSON_SHA256
    jpegs = [p for p in files if p.suffix == ".jpg"]
    assert len(jpegs) == 12 and _digest(tmp_path, jpegs) == JPEG_SHA256


def test_demo_files_at_64px_are_unchanged(tmp_path: Path) -> None:
    make_synthetic(tmp_path, n_train=6, n_val=3, seed=3, image_size=64, workers=1)
    assert _digest(tmp_path, sorted(p for p in tmp_path.rglob("*") if p.is_file())) == ALL_64PX_SHA256
