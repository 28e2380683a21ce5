"""Checkpoints that are always current and whole.

- `LastCheckpoint` writes `last.ckpt` every few minutes (or steps) and when training stops for any reason
  (max_epochs, max_time, early stopping), whatever a monitored metric does. Lightning's
  `ModelCheckpoint(save_last=True)` rewrites `last.ckpt` only when it also saves a top-k checkpoint, so with a metric
  that stopped improving `last.ckpt` fell behind the trained weights (step 40 of 59). The configs keep a
  `ModelCheckpoint` for the best-by-metric file, in the same folder.
- `AtomicCheckpointIO` writes every checkpoint to a temporary file beside its destination, fsyncs it and renames
  it over the old one, so a kill at any moment leaves the old file or the new one, never a truncated one (Lightning
  writes through a temporary file in `$TMPDIR` and moves it, which is a copy when `$TMPDIR` is another filesystem).
  Loading a damaged checkpoint raises `CheckpointError`, one line naming the file and the newest intact checkpoint
  beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is damaged or incomplete; the message names it and the newest intact one beside it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are atomic (temporary file in the destination folder, fsync, rename)
    and whose loads name a damaged file and its newest intact neighbour."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: the object store's own upload is atomic
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as e:  # torch.load reports a truncated or corrupt file with many error types
            if "://" in str(path) or intact(Path(path)):
                raise  # the file is whole: not ours to rephrase
            raise CheckpointError(damaged_message(Path(path), e)) from e


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save(obj)` to `path` so that `path` is always either its old content or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not every filesystem allows this)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def intact(path: Path) -> bool:
    """Is `path` a whole checkpoint file? (`torch.save` writes a zip archive: a truncated one has no directory.)"""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def damaged_message(path: Path, error: BaseException) -> str:
    """`path` is damaged: say so and name the newest intact checkpoint in its folder, if any."""
    why = (str(error).splitlines() or [type(error).__name__])[0][:200]
    others = sorted(
        (p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    good = next((p for p in others if intact(p)), None)
    hint = f"the newest intact checkpoint is {good} (resume with --ckpt_path {good})" if good else "no intact one"
    return f"{path} is damaged or incomplete ({type(error).__name__}: {why}); {hint}"


class LastCheckpoint(Callback):
    """Keeps `last.ckpt` current: written every `every_minutes` (or `every_n_train_steps`) and when training ends,
    whatever a monitored metric does. Not at every epoch's end: short epochs of a large model would spend their
    time writing checkpoints (1.7 GB each for ViT-B/16 with AdamW's state).

    Args:
        dirpath: folder of `last.ckpt`; None = the folder of the trainer's `ModelCheckpoint` (so that
            `--ckpt_path last` finds it), or `default_root_dir/checkpoints` without one.
        every_minutes: write at most this long after the last write (0: not by time).
        every_n_train_steps: also write every this many optimizer steps (0: not by steps).
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | None = None, every_minutes: float = 5.0, every_n_train_steps: int = 0) -> None:
        if every_minutes < 0 or every_n_train_steps < 0:
            raise ValueError("LastCheckpoint: every_minutes and every_n_train_steps must be >= 0")
        self.dirpath, self.every_minutes, self.every_n_train_steps = dirpath, every_minutes, every_n_train_steps
        self._saved_step = -1
        self._saved_at = time.monotonic()

    def path(self, trainer: L.Trainer) -> Path:
        """Where `last.ckpt` goes for this trainer."""
        if self.dirpath is not None:
            return Path(self.dirpath) / self.FILENAME
        best = trainer.checkpoint_callback
        folder = getattr(best, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return Path(folder) / self.FILENAME

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        due = bool(self.every_n_train_steps) and step > 0 and step % self.every_n_train_steps == 0
        due |= bool(self.every_minutes) and time.monotonic() - self._saved_at >= 60 * self.every_minutes
        # every rank must take the same decision: saving is collective, and clocks differ between ranks
        if trainer.strategy.broadcast(due):
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write `last.ckpt` now, unless it already holds this step."""
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.global_step == self._saved_step:
            return
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: a resume needs the optimizer too
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()
        log.info("wrote %s at step %d", path, trainer.global_step)
