"""make_synthetic: counts, byte-identical output for a seed whatever the worker count, argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_files import files, make

from vision_attn.data.synthetic import make_synthetic


def test_counts(tmp_path: Path) -> None:
    counts = make_synthetic(tmp_path, n_train=3, n_val=2, image_size=32, workers=1)
    assert counts == {
        "train_images": 3,
        "train_captions": 15,
        "train_questions": 24,
        "val_images": 2,
        "val_captions": 10,
        "val_questions": 16,
    }


def test_deterministic(tmp_path: Path) -> None:
    make(tmp_path / "a")
    make(tmp_path / "b", workers=2)
    make(tmp_path / "c", seed=1)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys()
    assert a == b, "output depends on the worker count"
    differ = [name for name in a if a[name] != c[name]]
    assert "annotations/captions_train2014.json" in differ and any(n.endswith(".jpg") for n in differ)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": -1}, {"n_val": -1}, {"n_train": 1_000_000}, {"image_size": 16}, {"workers": 0}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_synthetic(tmp_path, **{"n_train": 1, "n_val": 1, **kwargs})
