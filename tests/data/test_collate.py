"""Batches: stacked uint8 images, skipped images counted, texts right-padded in optimal length buckets."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from conftest import codec_of

from vision_attn.data.collate import collate, collate_images, length_buckets
from vision_attn.data.datasets import ImageDataset, ImageTextDataset
from vision_attn.data.layout import read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import IGNORE, TextCodec


@pytest.fixture(scope="module")
def records(synthetic_root: Path) -> list[ImageRecord]:
    return read_split(synthetic_root, "train")[:3]


@pytest.fixture(scope="module")
def codec(records: list[ImageRecord]) -> TextCodec:
    return codec_of(records)


def test_collate_pads_labels_and_counts_skipped(records: list[ImageRecord], codec: TextCodec) -> None:
    ds = ImageTextDataset(records, codec, 32, 64, "both", train=True, max_questions_per_item=8)
    items = [ds[0], None, ds[1], ds[2]]
    batch = collate(items)
    assert batch["skipped"] == 1 and batch["images"].shape[0] == 3
    for group in batch["caption"] + batch["vqa"]:
        ids, labels = group["input_ids"], group["labels"]
        assert (ids[:, -1] != 0).any()  # each bucket is padded to its own longest text, no further
        for m in range(ids.shape[0]):
            targets = labels[m][labels[m] != IGNORE]
            assert targets.numel() > 0
            assert targets[-1].item() == codec.eos  # every text ends with a supervised EOS
    assert collate([None, None]) == {"skipped": 2, "records": []}
    index = torch.cat([g["image_index"] for g in batch["vqa"]])
    assert torch.equal(index.unique(), torch.tensor([0, 1, 2]))


def test_collate_images_stacks_and_counts_skipped(records: list[ImageRecord]) -> None:
    ds = ImageDataset(records, image_size=32)
    batch = collate_images([ds[2], None, ds[0]])
    assert batch.keys() == {"images", "records", "skipped"}
    assert batch["images"].shape == (2, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert torch.equal(batch["images"][1], ds[0]["image"])
    assert batch["records"] == [records[2], records[0]] and batch["skipped"] == 1
    assert collate_images([None]) == {"skipped": 1, "records": []}


def _padded_size(lengths: list[int], buckets: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[m] for m in b) for b in buckets)


@pytest.mark.parametrize(
    ("lengths", "max_buckets", "expected"),
    [
        ([5, 3, 5, 3], 1, [[0, 1, 2, 3]]),
        ([5, 3, 5, 3], 2, [[1, 3], [0, 2]]),
        ([10, 2, 2, 2, 2, 9], 2, [[1, 2, 3, 4], [0, 5]]),  # 4*2 + 2*10 = 28 beats any other cut
        ([10, 2, 2, 2, 2, 9], 3, [[1, 2, 3, 4], [5], [0]]),
        ([7, 7, 7], 3, [[0, 1, 2]]),  # never more buckets than distinct lengths
    ],
)
def test_length_buckets_hand_cases(lengths: list[int], max_buckets: int, expected: list[list[int]]) -> None:
    assert length_buckets(lengths, max_buckets) == expected


def test_length_buckets_is_optimal_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 25))]
        k = rng.randint(1, 4)
        got = length_buckets(lengths, k)
        assert sorted(m for b in got for m in b) == list(range(len(lengths))) and len(got) <= k
        distinct = sorted(set(lengths))
        sizes = []  # every split of the sorted distinct lengths into at most k runs
        for r in range(min(k, len(distinct))):
            for cuts in itertools.combinations(range(1, len(distinct)), r):
                edges = [0, *cuts, len(distinct)]
                runs = [distinct[a:b] for a, b in zip(edges, edges[1:], strict=False)]
                sizes.append(_padded_size(lengths, [[m for m, n in enumerate(lengths) if n in run] for run in runs]))
        assert _padded_size(lengths, got) == min(sizes)
