"""The datasets: images for evaluation, images with teacher-forcing texts for training; unreadable images skipped."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import codec_of

from vision_attn.data.datasets import TASKS, ImageDataset, ImageTextDataset, chunk_items
from vision_attn.data.layout import read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import IGNORE, TextCodec, train_tokenizer
from vision_attn.tasks import caption_prompt, vqa_prompt


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
    for ds in (ImageDataset(moved, 32), ImageTextDataset(moved, codec, 32, 48, "both", train=True)):
        assert ds[0] is None and ds[1] is not None
    assert sum(bad.name in r.getMessage() for r in caplog.records) == 2


def test_training_items_give_one_caption_and_their_chunk_of_questions(
    records: list[ImageRecord], codec: TextCodec
) -> None:
    ds = ImageTextDataset(records, codec, 32, 64, "both", train=True, max_questions_per_item=3)
    assert len(ds) == 4 * 3  # 8 questions an image: chunks of 2, 3, 3
    item = ds[0]
    assert item["record"] is records[0] and item["image"].shape == (3, 32, 32)
    assert Counter(task for _, _, task in item["texts"]) == {TASKS["caption"]: 1, TASKS["vqa"]: 2}
    for ids, labels, _ in item["texts"]:
        assert len(ids) == len(labels) <= 64
        assert [t for t in labels if t != IGNORE][-1] == codec.eos


@pytest.mark.parametrize("cap", [None, 1, 3, 5, 8, 20])
def test_every_question_once_per_epoch(records: list[ImageRecord], codec: TextCodec, cap: int | None) -> None:
    """Training items cover each answered question exactly once; no item holds more than the cap."""
    ds = ImageTextDataset(records, codec, 32, 64, "vqa", train=True, max_questions_per_item=cap)
    seen: Counter = Counter()
    for i in range(len(ds)):
        texts = ds[i]["texts"]
        assert 1 <= len(texts) <= (cap or 8)
        rec = ds[i]["record"]
        for ids, _, _ in texts:
            seen[(rec.image_id, tuple(ids))] += 1
    expected = Counter(
        (r.image_id, tuple(codec.example(vqa_prompt(codec, q.question), q.answer, 64)[0]))
        for r in records
        for q in r.questions
    )
    assert seen == expected
    sizes = Counter(index for index, _, _ in ds.items)
    assert set(sizes.values()) == {-(-8 // cap) if cap else 1}


def test_chunks_are_balanced_and_skip_textless_images(records: list[ImageRecord]) -> None:
    no_questions = ImageRecord(7, records[0].path, ["a caption"], [])
    nothing = ImageRecord(8, records[0].path, [], [])
    unanswered = ImageRecord(9, records[0].path, [], [dataclasses.replace(records[0].questions[0], answer=None)])
    recs = [records[0], no_questions, nothing, unanswered]
    assert chunk_items(recs, "both", 3) == [(0, 0, 2), (0, 2, 5), (0, 5, 8), (1, 0, 0)]
    assert chunk_items(recs, "vqa", 5) == [(0, 0, 4), (0, 4, 8)]
    assert chunk_items(recs, "caption", 3) == [(0, 0, 0), (1, 0, 0)]
    assert chunk_items(recs, "both", None) == [(0, 0, 8), (1, 0, 0)]


def test_bad_cap_is_refused(records: list[ImageRecord], codec: TextCodec) -> None:
    with pytest.raises(ValueError, match="max_questions_per_item=0"):
        ImageTextDataset(records, codec, 32, 64, "both", train=True, max_questions_per_item=0)


@pytest.mark.parametrize(("tasks", "expected"), [("caption", {0: 1}), ("vqa", {1: 8}), ("both", {0: 1, 1: 8})])
def test_validation_items_give_every_question_and_one_caption(
    records: list[ImageRecord], codec: TextCodec, tasks: str, expected: dict[int, int]
) -> None:
    """Validation: one item per image, the loss on the first caption and on every annotated question."""
    ds = ImageTextDataset(records, codec, 32, 64, tasks, train=False, max_questions_per_item=3)
    assert len(ds) == len(records)
    item = ds[2]
    assert Counter(task for _, _, task in item["texts"]) == expected
    if tasks != "vqa":
        caption_ids = codec.example(caption_prompt(codec), records[2].captions[0], 64)[0]
        assert item["texts"][0][0] == caption_ids
