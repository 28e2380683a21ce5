"""The DataModule: a COCO/VQAv2-layout root, explicit files, either task alone, batches and skipped images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.layout import DataFiles


def _dm(**kw) -> VisionAttnDataModule:
    args = {"image_size": 32, "max_text_len": 64, "batch_size": 4, "num_workers": 0}
    return VisionAttnDataModule(**(args | kw))


def _files(root: Path, split: str, captions: bool = True, vqa: bool = True) -> DataFiles:
    return DataFiles(
        image_dir=str(root / f"{split}2014"),
        captions=str(root / "annotations" / f"captions_{split}2014.json") if captions else None,
        questions=str(root / f"v2_OpenEnded_mscoco_{split}2014_questions.json") if vqa else None,
        annotations=str(root / f"v2_mscoco_{split}2014_annotations.json") if vqa else None,
    )


def test_explicit_files_equal_the_root_layout(synthetic_root: Path) -> None:
    by_root = _dm(root=str(synthetic_root))
    by_files = _dm(train_files=_files(synthetic_root, "train"), val_files=_files(synthetic_root, "val"))
    assert by_root.train_records == by_files.train_records
    assert by_root.val_records == by_files.val_records
    assert by_root.tokenizer.get_vocab() == by_files.tokenizer.get_vocab()  # deterministic training


def test_needs_root_or_files() -> None:
    with pytest.raises(ValueError, match="data.root"):
        VisionAttnDataModule()


@pytest.mark.parametrize("tasks", ["caption", "vqa", "both"])
def test_task_selection_shapes_the_batch(synthetic_root: Path, tasks: str) -> None:
    dm = _dm(root=str(synthetic_root), tasks=tasks, questions_per_image=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 32, 32)
    assert batch["images"].dtype == torch.uint8  # normalised by the model, on its device
    assert ("caption" in batch) == (tasks != "vqa")
    assert ("vqa" in batch) == (tasks != "caption")
    if "caption" in batch:  # one caption per image, spread over length buckets
        assert sorted(torch.cat([g["image_index"] for g in batch["caption"]]).tolist()) == [0, 1, 2, 3]
    if "vqa" in batch:  # 3 questions per image
        index = torch.cat([g["image_index"] for g in batch["vqa"]])
        assert sorted(index.tolist()) == [b for b in range(4) for _ in range(3)]


def test_caption_only_and_vqa_only_data(synthetic_root: Path, tmp_path: Path) -> None:
    caps = _dm(
        train_files=_files(synthetic_root, "train", vqa=False), val_files=_files(synthetic_root, "val", vqa=False)
    )
    assert all(r.captions and not r.questions for r in caps.train_records)
    vqa = _dm(
        train_files=_files(synthetic_root, "train", captions=False),
        val_files=_files(synthetic_root, "val", captions=False),
    )
    assert all(r.questions and not r.captions for r in vqa.train_records)
    # and a root folder holding only the VQA files (images found by the COCO 2014 naming convention)
    root = tmp_path / "vqa_only"
    shutil.copytree(synthetic_root, root)
    shutil.rmtree(root / "annotations")
    dm = _dm(root=str(root))
    expected = [root / r.path.relative_to(synthetic_root) for r in caps.train_records]
    assert [r.path for r in dm.train_records] == expected
    batch = next(iter(dm.train_dataloader()))
    assert "vqa" in batch and "caption" not in batch
