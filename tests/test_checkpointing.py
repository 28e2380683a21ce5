"""Checkpoints always whole: atomic writes survive a kill -9, a damaged file is named with its intact neighbour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vision_attn.checkpointing import AtomicCheckpointIO, CheckpointError, atomic_save, intact

WRITER = """
import sys, torch
from pathlib import Path
from vision_attn.checkpointing import atomic_save
big = {"state_dict": {"w": torch.ones(96, 1024, 1024)}}  # 384 MB: the write takes a while
print("ready", flush=True)
while True:
    atomic_save(big, Path(sys.argv[1]))
"""


def test_a_kill_during_the_write_leaves_the_old_checkpoint_whole(tmp_path: Path) -> None:
    """kill -9 while a large checkpoint is being written over last.ckpt: last.ckpt is still the old, whole file;
    the orphaned temporary file is beside it (same filesystem, never $TMPDIR) and the next write removes it."""
    path = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.zeros(3)}, "global_step": 7}, path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 50 * 2**20 for p in tmp_path.glob(".last.ckpt.*.tmp")):
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write
    finally:
        proc.kill()
        proc.wait()
    orphans = list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert orphans, "the kill should have left the temporary file of the interrupted write"
    assert intact(path)
    loaded = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], torch.zeros(3))
    atomic_save({"global_step": 8}, path)
    assert not any(p.exists() for p in orphans)
    assert torch.load(path, weights_only=True) == {"global_step": 8}


def test_loading_a_damaged_checkpoint_names_it_and_the_newest_intact_one(tmp_path: Path) -> None:
    older, best, last = tmp_path / "epoch0-step10.ckpt", tmp_path / "epoch1-step20.ckpt", tmp_path / "last.ckpt"
    for i, p in enumerate((older, best, last)):
        atomic_save({"global_step": 10 * (i + 1), "state_dict": {"w": torch.randn(1000)}}, p)
        os.utime(p, (1000 + i, 1000 + i))
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what Lightning's copy out of $TMPDIR left after a kill
    assert not intact(last) and intact(best)
    with pytest.raises(CheckpointError) as info:
        AtomicCheckpointIO().load_checkpoint(last, weights_only=True)
    message = str(info.value)
    assert message.startswith(f"{last} is damaged or incomplete")
    assert f"the newest intact checkpoint is {best} (resume with --ckpt_path {best})" in message
    assert "\n" not in message
    last.write_bytes(b"")  # an empty file, as the issue found
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        AtomicCheckpointIO().load_checkpoint(last, weights_only=True)
    with pytest.raises(FileNotFoundError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "nope.ckpt")
