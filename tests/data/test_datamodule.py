"""The DataModule: a COCO/VQAv2-layout root, explicit files, either task alone, batches, and the tokenizer's way
from prepare_data (one process) to setup (every process)."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from vision_attn.data import datamodule
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.layout import DataFiles
from vision_attn.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer


def _dm(tmp_path: Path, **kw) -> VisionAttnDataModule:
    """A DataModule after prepare_data and setup("fit"), as a Trainer leaves it; its tokenizer file in tmp_path."""
    args = {"image_size": 32, "max_text_len": 64, "batch_size": 4, "num_workers": 0}
    args["tokenizer_out"] = str(tmp_path / f"tokenizer{next(_made)}.json")
    dm = VisionAttnDataModule(**(args | kw))
    dm.prepare_data()
    dm.setup("fit")
    return dm


_made = itertools.count()


def _files(root: Path, split: str, captions: bool = True, vqa: bool = True) -> DataFiles:
    return DataFiles(
        image_dir=str(root / f"{split}2014"),
        captions=str(root / "annotations" / f"captions_{split}2014.json") if captions else None,
        questions=str(root / f"v2_OpenEnded_mscoco_{split}2014_questions.json") if vqa else None,
        annotations=str(root / f"v2_mscoco_{split}2014_annotations.json") if vqa else None,
    )


def test_explicit_files_equal_the_root_layout(synthetic_root: Path, tmp_path: Path) -> None:
    by_root = _dm(tmp_path, root=str(synthetic_root))
    by_files = _dm(tmp_path, train_files=_files(synthetic_root, "train"), val_files=_files(synthetic_root, "val"))
    assert by_root.train_records == by_files.train_records
    assert by_root.val_records == by_files.val_records
    assert by_root.tokenizer.get_vocab() == by_files.tokenizer.get_vocab()  # deterministic training


def test_needs_root_or_files() -> None:
    with pytest.raises(ValueError, match="data.root"):
        VisionAttnDataModule()


@pytest.mark.parametrize("tasks", ["caption", "vqa", "both"])
def test_task_selection_shapes_the_batch(synthetic_root: Path, tmp_path: Path, tasks: str) -> None:
    dm = _dm(tmp_path, root=str(synthetic_root), tasks=tasks, max_questions_per_item=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 32, 32)
    assert batch["images"].dtype == torch.uint8  # normalised by the model, on its device
    assert ("caption" in batch) == (tasks != "vqa")
    assert ("vqa" in batch) == (tasks != "caption")
    if "caption" in batch:  # one caption per image, spread over length buckets
        assert sorted(torch.cat([g["image_index"] for g in batch["caption"]]).tolist()) == [0, 1, 2, 3]
    if "vqa" in batch:  # 8 questions an image in chunks of at most 3: 2 or 3 per item
        index = torch.cat([g["image_index"] for g in batch["vqa"]])
        assert set(Counter(index.tolist()).values()) <= {2, 3} and sorted(set(index.tolist())) == [0, 1, 2, 3]
    assert len(dm.train_dataloader().dataset) == len(dm.train_records) * (3 if tasks != "caption" else 1)


def test_caption_only_and_vqa_only_data(synthetic_root: Path, tmp_path: Path) -> None:
    caps = _dm(
        tmp_path,
        train_files=_files(synthetic_root, "train", vqa=False),
        val_files=_files(synthetic_root, "val", vqa=False),
    )
    assert all(r.captions and not r.questions for r in caps.train_records)
    vqa = _dm(
        tmp_path,
        train_files=_files(synthetic_root, "train", captions=False),
        val_files=_files(synthetic_root, "val", captions=False),
    )
    assert all(r.questions and not r.captions for r in vqa.train_records)
    # and a root folder holding only the VQA files (images found by the COCO 2014 naming convention)
    root = tmp_path / "vqa_only"
    shutil.copytree(synthetic_root, root)
    shutil.rmtree(root / "annotations")
    dm = _dm(tmp_path, root=str(root))
    expected = [root / r.path.relative_to(synthetic_root) for r in caps.train_records]
    assert [r.path for r in dm.train_records] == expected
    batch = next(iter(dm.train_dataloader()))
    assert "vqa" in batch and "caption" not in batch


def test_a_task_the_data_has_no_text_for_is_a_clear_error(synthetic_root: Path, tmp_path: Path) -> None:
    """Captions asked of a VQA-only set: no training item at all, said before any step, naming the setting."""
    dm = _dm(
        tmp_path,
        tasks="caption",
        train_files=_files(synthetic_root, "train", captions=False),
        val_files=_files(synthetic_root, "val", captions=False),
    )
    with pytest.raises(ValueError, match="no training image has a text for data.tasks='caption'"):
        dm.train_dataloader()


# ---------------------------------------------------------------------------------------------- the tokenizer


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("called where it must not be")


def test_init_trains_nothing_and_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("train_tokenizer", "load_tokenizer", "read_split", "read_files"):
        monkeypatch.setattr(datamodule, name, _refuse)
    nowhere = tmp_path / "nowhere"  # any read of it would fail too
    by_root = VisionAttnDataModule(root=str(nowhere), tokenizer_file=str(nowhere / "tokenizer.json"))
    by_files = VisionAttnDataModule(train_files=_files(nowhere, "train"), val_files=_files(nowhere, "val"))
    for dm in (by_root, by_files):
        assert dm.tokenizer is None and dm.codec is None
        assert dm.train_records == [] and dm.val_records == []
    assert not nowhere.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match=r"call prepare_data\(\) and setup\(\) first"):
        by_root.train_dataloader()


def test_every_rank_loads_the_tokenizer_prepare_data_wrote(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning runs prepare_data in one process per node, then setup in every process (rank)."""
    out = tmp_path / "run" / "tokenizer.json"
    rank0, rank1 = (VisionAttnDataModule(root=str(synthetic_root), tokenizer_out=str(out)) for _ in range(2))
    rank0.prepare_data()
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["tokenizer.json"]  # no partial file left
    monkeypatch.setattr(datamodule, "train_tokenizer", _refuse)  # setup only loads
    rank1.setup("fit")
    rank0.setup("fit")
    written = load_tokenizer(out)
    assert len(written) > 100
    assert rank0.tokenizer.get_vocab() == rank1.tokenizer.get_vocab() == written.get_vocab()
    assert rank0.tokenizer.backend_tokenizer.to_str() == rank1.tokenizer.backend_tokenizer.to_str()
    assert rank1.train_records == rank0.train_records and rank1.val_records == rank0.val_records
    # a second setup (validate after fit) keeps the tokenizer it has
    tokenizer = rank1.tokenizer
    rank1.setup("validate")
    assert rank1.tokenizer is tokenizer


def test_prepare_data_and_setup_parse_the_training_json_once_in_one_process(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that trains the tokenizer keeps the records it read for its `setup`; another reads its own."""
    reads: list[str] = []
    real = datamodule.read_split
    monkeypatch.setattr(datamodule, "read_split", lambda root, split: reads.append(split) or real(root, split))
    out = str(tmp_path / "tokenizer.json")
    rank0, rank1 = (VisionAttnDataModule(root=str(synthetic_root), tokenizer_out=out) for _ in range(2))
    rank0.prepare_data()
    rank0.setup("fit")
    assert reads == ["train", "val"]
    rank1.setup("fit")
    assert reads == ["train", "val", "train", "val"]
    assert rank0.train_records == rank1.train_records and len(rank0.train_records) == 48


def test_tokenizer_goes_to_the_trainers_root_dir(synthetic_root: Path, tmp_path: Path) -> None:
    dm = VisionAttnDataModule(root=str(synthetic_root))
    with pytest.raises(ValueError, match="data.tokenizer_out: not set and no Trainer"):
        dm.prepare_data()
    dm.trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False, accelerator="cpu", devices=1)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json: no tokenizer there; prepare_data writes it"):
        dm.setup("fit")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokenizer_path == tmp_path / "tokenizer.json"
    assert dm.tokenizer.get_vocab() == load_tokenizer(tmp_path / "tokenizer.json").get_vocab()


def test_tokenizer_file_is_used_as_it_is(synthetic_root: Path, tmp_path: Path) -> None:
    given = tmp_path / "given.json"
    save_tokenizer(train_tokenizer(["a small red circle", "a large blue square"] * 3, vocab_size=300), given)
    dm = VisionAttnDataModule(root=str(synthetic_root), tokenizer_file=str(given), tokenizer_out=str(tmp_path / "x"))
    dm.prepare_data()
    assert [p.name for p in tmp_path.iterdir()] == ["given.json"]  # nothing trained or written
    dm.setup("fit")
    assert dm.tokenizer.get_vocab() == load_tokenizer(given).get_vocab()


class _Draws(torch.utils.data.Dataset):
    """Each item: what Python's `random` gives in the worker that loads it (caption and question sampling use it)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        import random

        return random.random()


def test_loader_workers_are_seeded_as_lightning_seeds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our `worker_init_fn` replaces the one Lightning adds after `seed_everything(workers=True)` (what LightningCLI's
    `seed_everything` does), so it must seed the workers the same way: the same draws as Lightning's own."""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)  # seed_everything sets it: restored after the test

    def draws(init) -> list[float]:
        L.seed_everything(7, workers=True)
        loader = torch.utils.data.DataLoader(_Draws(), batch_size=None, num_workers=1, worker_init_fn=init)
        return [float(x) for x in loader]

    ours = draws(datamodule.die_with_parent)
    assert ours == draws(pl_worker_init_function)
    assert ours == draws(datamodule.die_with_parent)  # reproducible
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    L.seed_everything(7, workers=False)
    loader = torch.utils.data.DataLoader(
        _Draws(), batch_size=None, num_workers=1, worker_init_fn=datamodule.die_with_parent
    )
    assert [float(x) for x in loader] != ours  # without workers=True, torch's own worker seeding
