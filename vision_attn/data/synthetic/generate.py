"""`make_synthetic`: render every image of a split in a process pool, then write the split's annotation files."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from pathlib import Path

from tqdm import tqdm

from vision_attn.data.coco import IMAGE_2014
from vision_attn.data.synthetic.scene import render_scene
from vision_attn.data.synthetic.variants import get_variant
from vision_attn.data.synthetic.writer import Example, write_split

logger = logging.getLogger(__name__)

VAL_ID_OFFSET = 1_000_000  # image ids: train 1..n_train, val 1_000_000.. (unique across splits, like COCO)


def _image_id(split: str, index: int) -> int:
    return index + 1 if split == "train" else VAL_ID_OFFSET + index


def make_example(task: tuple[str, str, int, int, int, str]) -> Example:
    """Render image `index` of `split` of a variant, save its JPEG and return its annotations (runs in a worker)."""
    out, split, index, seed, image_size, name = task
    variant = get_variant(name)
    rng = random.Random(f"{seed}-{split}-{index}")
    image, objs = render_scene(rng, image_size, variant.scene)
    captions = variant.captions(objs, rng)
    questions = variant.questions(objs, rng, image_size)
    image_id = _image_id(split, index)
    file_name = IMAGE_2014.format(subtype=f"{split}2014", image_id=image_id)
    image.save(Path(out) / f"{split}2014" / file_name, "JPEG", quality=95)
    return Example(image_id, file_name, objs, captions, questions)


def make_synthetic(
    out: str | Path,
    n_train: int = 20000,
    n_val: int = 1000,
    seed: int = 0,
    image_size: int | None = None,
    workers: int | None = None,
    variant: str = "demo",
) -> dict[str, int]:
    """Write the dataset under `out`; return counts (images/captions/questions per split). Deterministic for a seed.

    Args:
        out: output folder; created if missing. Existing files of the same names are overwritten.
        n_train: number of training images (ids 1..n_train).
        n_val: number of validation images (ids from 1_000_000).
        seed: dataset seed; image `i` of a split depends only on (seed, split, i).
        image_size: side of the square images in pixels (>= 32); default the variant's (demo: 128).
        workers: rendering processes; default min(cpu count, 4). 1 renders in this process.
        variant: which data (`variants.VARIANTS`): "demo" (the built-in set), "shapes64", "relations", "counting".

    Returns:
        {"train_images", "train_captions", "train_questions", "val_images", "val_captions", "val_questions"}.
    """
    spec = get_variant(variant)
    image_size = spec.image_size if image_size is None else image_size
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
            tasks = [(str(out), split, i, seed, image_size, variant) for i in range(n)]
            # imap keeps task order, so the result never depends on which worker rendered what
            chunksize = max(1, min(64, n // (8 * workers)))
            results = pool.imap(make_example, tasks, chunksize) if pool else map(make_example, tasks)
            examples = list(tqdm(results, total=n, desc=f"synthetic {split}2014", unit="img"))
            write_split(out, split, examples, image_size, spec.scene.shapes)
            counts[f"{split}_images"] = n
            counts[f"{split}_captions"] = sum(len(ex.captions) for ex in examples)
            counts[f"{split}_questions"] = sum(len(ex.questions) for ex in examples)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    logger.info(
        "wrote synthetic COCO/VQAv2 dataset (%s) to %s: %d train / %d val images, %d captions, %d questions in %.1fs",
        variant,
        out,
        n_train,
        n_val,
        counts["train_captions"] + counts["val_captions"],
        counts["train_questions"] + counts["val_questions"],
        time.perf_counter() - start,
    )
    return counts
