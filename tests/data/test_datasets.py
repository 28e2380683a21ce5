"""The datasets: images for evaluation, images with teacher-forcing texts for training; unreadable images skipped."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import codec_of

from vision_attn.data.datasets import TASKS, ImageDataset, ImageTextDataset
from vision_attn.data.layout import read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import IGNORE, TextCodec, train_tokenizer
from vision_attn.tasks import caption_prompt


@pytest.fixture(scope="module")
def records(synthetic_root: Path) -> list[ImageRecord]:
    return read_split(synthetic_root, "train")[:4]


@pytest.fixture(scope="module")
def codec(records: list[ImageRecord]) -> TextCodec:
    return codec_of(records)


def test_image_dataset_items(records: list[ImageRecord]) -> None:
    ds = ImageDataset(records, image_size=48)
    assert len(ds) == 4
    item = ds[1]
    assert item.keys() == {"image", "record"} and item["record"] is records[1]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8


def test_unreadable_image_is_none_and_named(
    records: list[ImageRecord], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / records[0].path.name
    shutil.copy(records[0].path, bad)
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    moved = [ImageRecord(records[0].image_id, bad, records[0].captions, records[0].questions), records[1]]
    caplog.set_level(logging.WARNING)
    codec = TextCodec(train_tokenizer(["a b c"], vocab_size=300))
    for ds in (ImageDataset(moved, 32), ImageTextDataset(moved, codec, 32, 48, 2, "both")):
        assert ds[0] is None and ds[1] is not None
    assert sum(bad.name in r.getMessage() for r in caplog.records) == 2


def test_training_items_sample_one_caption_and_some_questions(records: list[ImageRecord], codec: TextCodec) -> None:
    ds = ImageTextDataset(records, codec, image_size=32, max_text_len=64, questions_per_image=3, tasks="both")
    item = ds[0]
    assert item["record"] is records[0] and item["image"].shape == (3, 32, 32)
    tasks = Counter(task for _, _, task in item["texts"])
    assert tasks == {TASKS["caption"]: 1, TASKS["vqa"]: 3}
    for ids, labels, _ in item["texts"]:
        assert len(ids) == len(labels) <= 64
        assert [t for t in labels if t != IGNORE][-1] == codec.eos


@pytest.mark.parametrize(("tasks", "expected"), [("caption", {0: 1}), ("vqa", {1: 8}), ("both", {0: 1, 1: 8})])
def test_validation_items_give_every_question_and_one_caption(
    records: list[ImageRecord], codec: TextCodec, tasks: str, expected: dict[int, int]
) -> None:
    """questions_per_image=None: the loss on the first caption and on every annotated question."""
    ds = ImageTextDataset(records, codec, image_size=32, max_text_len=64, questions_per_image=None, tasks=tasks)
    item = ds[2]
    assert Counter(task for _, _, task in item["texts"]) == expected
    if tasks != "vqa":
        caption_ids = codec.example(caption_prompt(codec), records[2].captions[0], 64)[0]
        assert item["texts"][0][0] == caption_ids
