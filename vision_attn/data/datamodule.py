"""One DataModule for COCO-captions and VQAv2-format data: a folder in the 2014 layout, or explicit files.

Sampling is image-centric: an item is one image with its texts (one caption and up to
`questions_per_image` questions in training; every caption and question in validation). Each image is
decoded and encoded once per step however many texts ask about it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from vision_attn.data.errors import ImageLoadError
from vision_attn.data.images import load_image
from vision_attn.data.layout import DataFiles, read_files, read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import IGNORE, TextCodec, load_tokenizer, train_tokenizer
from vision_attn.data.transforms import image_transform

log = logging.getLogger(__name__)

TASKS = {"caption": 0, "vqa": 1}  # task ids carried by each text
# Each task's texts are split into up to this many length buckets, each padded to its own longest text. On the
# built-in set (captions of 18 to 51 tokens, questions of 11 to 16) 3 buckets cut the padded text tokens of a step
# by ~24%, and the decoder's cost is proportional to them.
LENGTH_BUCKETS = 3


class ImageTextDataset(Dataset):
    """Items: image tensor [3, S, S] and its texts as (input_ids, labels, task) triples, or None if unreadable."""

    def __init__(
        self,
        records: list[ImageRecord],
        codec: TextCodec,
        image_size: int,
        max_text_len: int,
        questions_per_image: int | None,
        tasks: str,
        tokenize: bool = True,
    ) -> None:
        self.records = records
        self.codec = codec
        self.transform = image_transform(image_size)
        self.max_text_len = max_text_len
        self.questions_per_image = questions_per_image  # None: all (evaluation)
        self.tasks = tasks
        self.tokenize = tokenize  # False: images and records only (generation needs no teacher-forcing texts)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        rec = self.records[i]
        try:
            image = self.transform(load_image(rec.path))
        except ImageLoadError as e:
            log.warning("skipping unreadable image: %s", e)
            return None
        if not self.tokenize:
            return {"image": image, "texts": [], "record": rec}
        captions = rec.captions if self.tasks != "vqa" else []
        questions = [q for q in rec.questions if q.answer is not None] if self.tasks != "caption" else []
        texts = []
        if self.questions_per_image is not None:  # training: one random caption, a random subset of questions
            captions = [random.choice(captions)] if captions else []
            questions = random.sample(questions, min(len(questions), self.questions_per_image))
        elif captions:
            captions = captions[:1]  # evaluation loss on one caption; all captions stay as references
        for c in captions:
            texts.append((*self.codec.example(self.codec.caption_prompt(), c, self.max_text_len), 0))
        for q in questions:
            texts.append((*self.codec.example(self.codec.vqa_prompt(q.question), q.answer, self.max_text_len), 1))
        return {"image": image, "texts": texts, "record": rec}


def _pad_texts(texts: list[tuple[list[int], list[int], int]]) -> dict[str, torch.Tensor]:
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


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack images [B, 3, S, S]; each task's texts (`caption`, `vqa`) go in a list of right-padded length buckets.

    Unreadable images (None items) are dropped and counted in `skipped`.
    """
    kept = [it for it in items if it is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "records": [it["record"] for it in kept]}
    if not kept:
        return batch
    batch["images"] = torch.stack([it["image"] for it in kept])
    for name, task_id in TASKS.items():
        texts = [(ids, lab, b) for b, it in enumerate(kept) for ids, lab, t in it["texts"] if t == task_id]
        if texts:
            buckets = length_buckets([len(ids) for ids, _, _ in texts])
            batch[name] = [_pad_texts([texts[m] for m in bucket]) for bucket in buckets]
    return batch


class VisionAttnDataModule(L.LightningDataModule):
    """COCO 2014 captions + VQAv2 data (or the built-in synthetic set, which uses the same layout).

    Args:
        root: a folder in the COCO 2014 + VQAv2 layout (`train2014/`, `val2014/`, `annotations/captions_*.json`,
            `v2_OpenEnded_mscoco_*_questions.json`, `v2_mscoco_*_annotations.json`). Or give `train_files`/`val_files`.
        train_split: split name under `root` used for training.
        val_split: split name under `root` used for validation and testing.
        train_files: explicit training files (instead of `root`).
        val_files: explicit validation files (instead of `root`).
        tasks: train on captions, VQA, or both mixed.
        image_size: side the images are resized to (linked to the encoder's).
        batch_size: images per batch (each brings one caption and up to `questions_per_image` questions).
        questions_per_image: questions sampled per image per training step.
        max_text_len: prompt + target tokens; longer texts are cut.
        num_workers: loader worker processes.
        tokenizer_file: a `tokenizer.json` to use; None trains one on the training text (deterministic).
        vocab_size: target vocabulary of a trained tokenizer.
        val_max_images: validate on at most this many images (None: all).
    """

    def __init__(
        self,
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        train_files: DataFiles | None = None,
        val_files: DataFiles | None = None,
        tasks: Literal["both", "caption", "vqa"] = "both",
        image_size: int = 64,
        batch_size: int = 64,
        questions_per_image: int = 4,
        max_text_len: int = 64,
        num_workers: int = 2,
        tokenizer_file: str | None = None,
        vocab_size: int = 8000,
        val_max_images: int | None = None,
    ) -> None:
        super().__init__()
        if root is None and (train_files is None or val_files is None):
            raise ValueError("set data.root to a COCO/VQAv2-layout folder, or both data.train_files and data.val_files")
        self.save_hyperparameters()
        self.train_records = read_files(train_files) if train_files else read_split(Path(root), train_split)
        self.val_records = read_files(val_files) if val_files else read_split(Path(root), val_split)
        if val_max_images is not None:
            self.val_records = self.val_records[:val_max_images]
        self.tokenizer: PreTrainedTokenizerFast = (
            load_tokenizer(tokenizer_file) if tokenizer_file else train_tokenizer(self._training_text(), vocab_size)
        )
        self.codec = TextCodec(self.tokenizer)
        log.info("data: %d training images, %d validation images", len(self.train_records), len(self.val_records))

    def _training_text(self):
        for r in self.train_records:
            yield from r.captions
            for q in r.questions:
                yield q.question
                if q.answer:
                    yield q.answer

    def _dataset(self, records: list[ImageRecord], train: bool) -> ImageTextDataset:
        hp = self.hparams
        return ImageTextDataset(
            records, self.codec, hp.image_size, hp.max_text_len, hp.questions_per_image if train else None, hp.tasks
        )

    def _loader(self, records: list[ImageRecord], train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self._dataset(records, train),
            batch_size=hp.batch_size,
            shuffle=train,
            num_workers=hp.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=hp.num_workers > 0,
            drop_last=train and len(records) > hp.batch_size,
        )

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> dict:
        # Only tensors move; the records (text metadata for metrics) stay as they are, uncopied.
        move = super().transfer_batch_to_device
        return {k: v if k == "records" else move(v, device, dataloader_idx) for k, v in batch.items()}

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_records, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_records, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_records, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_records, train=False)
