"""One DataModule for COCO-captions and VQAv2-format data: a folder in the 2014 layout, or explicit files.

It follows Lightning's order, so that every process of a multi-GPU run has the same tokenizer and constructing it
reads nothing: `prepare_data` (once per node) trains the tokenizer on the training text and writes it to a file;
`setup` (every process) reads the records and loads that file; the LightningModule then sizes its model from
`datamodule.tokenizer` in `configure_model`. A malformed json stops `prepare_data` or `setup`, before any step.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from vision_attn.data.collate import collate
from vision_attn.data.datasets import ImageTextDataset
from vision_attn.data.layout import DataFiles, read_files, read_split
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import TextCodec, load_lm_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_id: int) -> None:
    """`worker_init_fn` of every loader: a worker ends with the process that started it, even a killed one.

    After a `kill -9` of the trainer, a worker blocked writing a finished batch into the dead parent's pipe never
    reaches PyTorch's check that its parent is alive (one stayed 13 minutes, holding 560 MB). Linux delivers
    SIGKILL to a process whose parent dies when asked to (`prctl(PR_SET_PDEATHSIG)`); elsewhere nothing changes.
    A loader with a `worker_init_fn` of its own no longer gets Lightning's, so this one also does what Lightning's
    would have: seed the worker from the global seed and the rank after `seed_everything(workers=True)`.
    """
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        pl_worker_init_function(worker_id)
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    elif os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def training_text(records: list[ImageRecord]) -> Iterator[str]:
    """Every caption, question and answer: what the tokenizer is trained on."""
    for r in records:
        yield from r.captions
        for q in r.questions:
            yield q.question
            if q.answer:
                yield q.answer


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
        batch_size: items per training batch (an item is an image with one caption and up to
            `max_questions_per_item` of its questions), images per validation batch.
        max_questions_per_item: training uses every annotated question once per epoch; an image with more than
            this many is split into several items (`ImageTextDataset`). None: all of an image's in one item.
        max_text_len: prompt + target tokens; longer texts are cut.
        num_workers: loader worker processes.
        tokenizer_file: a `tokenizer.json` to use; None trains one on the training text (deterministic).
        language_model: a pretrained language model's folder whose tokenizer to use instead (linked from
            `model.decoder.pretrained` by the CLI); nothing is trained then.
        tokenizer_out: where `prepare_data` writes the tokenizer it trains, for `setup` to load; None:
            `tokenizer.json` in the trainer's `default_root_dir`. Unused with `tokenizer_file`.
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
        max_questions_per_item: int | None = 8,
        max_text_len: int = 64,
        num_workers: int = 2,
        tokenizer_file: str | None = None,
        language_model: str | None = None,
        tokenizer_out: str | None = None,
        vocab_size: int = 8000,
        val_max_images: int | None = None,
    ) -> None:
        super().__init__()
        if root is None and (train_files is None or val_files is None):
            raise ValueError("set data.root to a COCO/VQAv2-layout folder, or both data.train_files and data.val_files")
        self.save_hyperparameters()
        # all set by setup
        self.train_records: list[ImageRecord] = []
        self._prepared_train: list[ImageRecord] = []  # read by prepare_data, for setup("fit") in the same process
        self.val_records: list[ImageRecord] = []
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.codec: TextCodec | None = None

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer file `setup` loads: `tokenizer_file`, else the one `prepare_data` writes."""
        hp = self.hparams
        if hp.tokenizer_file or hp.tokenizer_out:
            return Path(hp.tokenizer_file or hp.tokenizer_out)
        if self.trainer is None:
            raise ValueError(
                "data.tokenizer_out: not set and no Trainer (whose default_root_dir would hold tokenizer.json); "
                "set tokenizer_out or tokenizer_file"
            )
        return Path(self.trainer.default_root_dir) / "tokenizer.json"

    def _read(self, train: bool) -> list[ImageRecord]:
        """The records of the training or the validation split."""
        hp = self.hparams
        files, split = (hp.train_files, hp.train_split) if train else (hp.val_files, hp.val_split)
        return read_files(files) if files else read_split(Path(hp.root), split)

    def prepare_data(self) -> None:
        """Train the tokenizer on the training text and write it to `tokenizer_path` (nothing with `tokenizer_file`).

        Lightning runs this in one process per node, before `setup` in every process.
        """
        if self.hparams.tokenizer_file or self.hparams.language_model:
            return
        path = self.tokenizer_path
        # kept for this process's `setup("fit")`, which would otherwise parse the training json a second time
        # (seconds and gigabytes for VQAv2); every other process reads its own in `setup`
        self._prepared_train = self._read(train=True)
        tokenizer = train_tokenizer(training_text(self._prepared_train), self.hparams.vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        save_tokenizer(tokenizer, partial)
        partial.replace(path)  # atomic, so a process that shares the folder never loads half a file
        log.info("wrote the tokenizer (%d tokens) to %s", len(tokenizer), path)

    def setup(self, stage: str | None = None) -> None:
        """Read the records of the stage (training and validation for "fit", else validation) and load the tokenizer.

        Raises:
            DataFormatError: a json file is malformed (the message names the file and the field).
            FileNotFoundError: there is no tokenizer file (`prepare_data` has not run, and no `tokenizer_file`).
        """
        if stage in (None, "fit") and not self.train_records:
            self.train_records = self._prepared_train or self._read(train=True)
        self._prepared_train = []  # validate, test and predict need no training records
        if not self.val_records:
            self.val_records = self._read(train=False)[: self.hparams.val_max_images]
        if self.tokenizer is None and self.hparams.language_model:
            self.tokenizer = load_lm_tokenizer(self.hparams.language_model)
            self.codec = TextCodec(self.tokenizer)
        if self.tokenizer is None:
            path = self.tokenizer_path
            if not self.hparams.tokenizer_file and not path.exists():
                raise FileNotFoundError(f"{path}: no tokenizer there; prepare_data writes it (the Trainer runs it)")
            self.tokenizer = load_tokenizer(path)
            self.codec = TextCodec(self.tokenizer)
        log.info("data: %d training images, %d validation images", len(self.train_records), len(self.val_records))

    def _dataset(self, records: list[ImageRecord], train: bool) -> ImageTextDataset:
        hp = self.hparams
        return ImageTextDataset(
            records, self.codec, hp.image_size, hp.max_text_len, hp.tasks, train, hp.max_questions_per_item
        )

    def _loader(self, records: list[ImageRecord], train: bool) -> DataLoader:
        if self.codec is None:
            raise RuntimeError("VisionAttnDataModule: call prepare_data() and setup() first (a Trainer does)")
        hp = self.hparams
        dataset = self._dataset(records, train)
        if train and not len(dataset):
            raise ValueError(f"data: no training image has a text for data.tasks={hp.tasks!r}")
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=train,
            num_workers=hp.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=hp.num_workers > 0,
            drop_last=train and len(dataset) > hp.batch_size,
            worker_init_fn=die_with_parent,
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
