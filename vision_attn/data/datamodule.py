"""One DataModule for COCO-captions and VQAv2-format data: a folder in the 2014 layout, or explicit files.

Sampling is image-centric: an item is one image with its texts (one caption and up to
`questions_per_image` questions in training; every caption and question in validation). Each image is
decoded and encoded once per step however many texts ask about it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from vision_attn.data.collate import collate
from vision_attn.data.datasets import ImageTextDataset
from vision_attn.data.layout import DataFiles, read_files, read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import TextCodec, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)


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
