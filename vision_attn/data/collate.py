"""Batches: images stacked, unreadable ones (None items) dropped and counted, texts padded in length buckets."""

from __future__ import annotations

from typing import Any

import torch

from vision_attn.data.datasets import TASKS, Text
from vision_attn.data.tokenizer import IGNORE

__all__ = ["LENGTH_BUCKETS", "collate", "collate_images", "length_buckets", "pad_texts"]

# Each task's texts are split into up to this many length buckets, each padded to its own longest text: the
# decoder's cost grows with the padded tokens, and captions and questions vary in length (benchmarks/README.md).
LENGTH_BUCKETS = 3


def collate_images(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """`ImageDataset` items -> ``images`` uint8 [B, 3, S, S], their ``records``, and ``skipped`` (None items).

    ``images`` is absent when every image of the batch was unreadable.
    """
    kept = [it for it in items if it is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "records": [it["record"] for it in kept]}
    if kept:
        batch["images"] = torch.stack([it["image"] for it in kept])
    return batch


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """`ImageTextDataset` items -> `collate_images`' batch plus, per task with texts (``caption``, ``vqa``), a list
    of right-padded length buckets, each ``{"input_ids", "labels": [M, T], "image_index": [M]}``."""
    batch = collate_images(items)
    kept = [it for it in items if it is not None]
    for name, task_id in TASKS.items():
        texts = [(ids, lab, b) for b, it in enumerate(kept) for ids, lab, t in it["texts"] if t == task_id]
        if texts:
            buckets = length_buckets([len(ids) for ids, _, _ in texts])
            batch[name] = [pad_texts([texts[m] for m in bucket]) for bucket in buckets]
    return batch


def pad_texts(texts: list[Text]) -> dict[str, torch.Tensor]:
    """(ids, labels, image) triples -> right-padded input_ids/labels [M, T] and image_index [M]."""
    T = max(len(ids) for ids, _, _ in texts)
    input_ids = torch.zeros(len(texts), T, dtype=torch.long)  # pad id 0; padded positions carry IGNORE labels
    labels = torch.full((len(texts), T), IGNORE, dtype=torch.long)
    for m, (ids, lab, _) in enumerate(texts):
        input_ids[m, : len(ids)] = torch.tensor(ids)
        labels[m, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "labels": labels, "image_index": torch.tensor([b for _, _, b in texts])}


def length_buckets(lengths: list[int], max_buckets: int = LENGTH_BUCKETS) -> list[list[int]]:
    """Group text indices into at most `max_buckets` buckets of similar length with the fewest padded tokens.

    Minimises sum(bucket size * longest text in bucket), exactly, by dynamic programming over the distinct lengths
    (buckets are runs of the sorted lengths). Returns the buckets shortest first, indices ascending within each.
    """
    distinct = sorted(set(lengths))
    U = len(distinct)
    below = [sum(n < d for n in lengths) for d in distinct] + [len(lengths)]  # texts shorter than distinct[i]
    # best[k][i]: fewest padded tokens covering distinct[i:] with at most k buckets; cut[k][i]: the first one's end
    best = [[float("inf")] * U + [0.0] for _ in range(max_buckets + 1)]
    cut = [[U] * (U + 1) for _ in range(max_buckets + 1)]
    for k in range(1, max_buckets + 1):
        for i in range(U):
            for j in range(i + 1, U + 1):
                cost = (below[j] - below[i]) * distinct[j - 1] + best[k - 1][j]
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    buckets, i, k = [], 0, max_buckets
    while i < U:
        j = cut[k][i]
        lo, hi = distinct[i], distinct[j - 1]
        buckets.append([m for m, n in enumerate(lengths) if lo <= n <= hi])
        i, k = j, k - 1
    return buckets
