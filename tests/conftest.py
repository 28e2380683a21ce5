"""Shared fixtures: a tiny model config, a tiny model with non-degenerate outputs, a tiny synthetic dataset."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import TextCodec
from vision_attn.models import VisionAttnModel

# The suite runs on small CPUs next to other work: one thread is faster than fighting for cores.
torch.set_num_threads(1)

VOCAB = 60
MAX_LEN = 48
IMAGE_SIZE = 32


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a minute (still runs by default)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one (`pytest -m gpu` runs only these)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `gpu` tests where torch sees no CUDA device, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def codec_of(records: list[ImageRecord]) -> TextCodec:
    """A codec whose tokenizer is trained on the records' captions, questions and answers."""
    from vision_attn.data.tokenizer import train_tokenizer

    texts = [t for r in records for t in r.captions + [x for q in r.questions for x in (q.question, q.answer)]]
    return TextCodec(train_tokenizer(texts))


def quiet_trainer(**kw: object):
    """A Lightning Trainer that logs, checkpoints and prints nothing a test did not ask for; `kw` as Trainer takes."""
    import lightning as L

    quiet = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return L.Trainer(**{**quiet, **kw})


def tiny_config(vocab_size: int = VOCAB, max_len: int = MAX_LEN) -> ModelConfig:
    """Encoder 32 px / patch 8 (16 image tokens), width 32 -> decoder width 48, 2 decoder layers."""
    return ModelConfig(
        EncoderConfig(image_size=IMAGE_SIZE, patch_size=8, dim=32, depth=1, num_heads=2),
        DecoderConfig(vocab_size=vocab_size, dim=48, depth=2, num_heads=2, max_len=max_len),
    )


def build_tiny_model(
    config: ModelConfig | None = None, seed: int = 25, dtype: torch.dtype = torch.float32
) -> VisionAttnModel:
    """A seeded tiny model re-initialised with O(1) weights (seed 25: some greedy outputs stop at EOS, some not).

    The library's init (std 0.02) makes an untrained decoder emit one token over and over, which would let
    generation tests pass for the wrong reasons; O(1) embeddings and 1/sqrt(fan_in) projections give varied,
    image-dependent tokens (test_generation.py checks that they stay varied).
    """
    torch.manual_seed(seed)
    model = VisionAttnModel(config or tiny_config())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.1)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1.0)
    return model.to(dtype).eval()


@pytest.fixture
def model_config() -> ModelConfig:
    return tiny_config()


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """Factory: make_config(vocab_size=60, max_len=48) -> the tiny ModelConfig."""
    return tiny_config


@pytest.fixture
def make_model() -> Callable[..., VisionAttnModel]:
    """Factory: make_model(config=None, seed=0, dtype=torch.float32)."""
    return build_tiny_model


@pytest.fixture
def tiny_model() -> VisionAttnModel:
    return build_tiny_model()


@pytest.fixture
def images() -> torch.Tensor:
    """Four random normalised images [4, 3, 32, 32]."""
    return torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def compiled_graphs() -> Callable[[], int]:
    """Start from an empty torch.compile cache; the returned function counts the graphs compiled since.

    Tests of compiled decoding check the count, so that they fail if torch.compile fell back to eager
    (it does so silently past its recompile limit, which earlier tests in the session could reach).
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    return lambda: counters["stats"]["unique_graphs"]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train + 16 val synthetic images (64 px) in the COCO 2014 + VQAv2 layout. Do not modify: copy first."""
    from vision_attn.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, n_train=48, n_val=16, seed=0, image_size=64, workers=1)
    return root


@dataclass
class TrainedTiny:
    """A tiny model trained for about a minute on 4,000 synthetic scenes (64 px), and its data."""

    model: VisionAttnModel
    codec: TextCodec
    root: Path  # the dataset, with annotations/instances_val2014.json (object boxes)
    train_records: list[ImageRecord]
    val_records: list[ImageRecord]  # 100 images


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> TrainedTiny:
    """About a minute on 2 cores: 500 steps of 32 images, each with a caption and 4 questions. Trained once per
    session and shared by the learning test (accuracy) and the attention test (pointing game)."""
    import lightning as L

    from vision_attn.data.datamodule import VisionAttnDataModule
    from vision_attn.data.synthetic import make_synthetic
    from vision_attn.training import VisionAttnModule

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # most of the suite's compute; let it use both cores
    try:
        root = tmp_path_factory.mktemp("learning") / "data"
        make_synthetic(root, n_train=4000, n_val=100, seed=1, image_size=64, workers=2)
        L.seed_everything(0)
        dm = VisionAttnDataModule(root=str(root), image_size=64, max_text_len=64, batch_size=32, num_workers=0)
        module = VisionAttnModule(  # the model is built in fit, once the DataModule has its tokenizer
            encoder=EncoderConfig(image_size=64, patch_size=8, dim=64, depth=2, num_heads=2, stem="conv"),
            decoder=DecoderConfig(dim=64, depth=2, num_heads=2, max_len=64),
            lr=2e-3,
            warmup_steps=30,
        )
        trainer = quiet_trainer(
            default_root_dir=str(root.parent),  # where the DataModule writes its tokenizer
            max_epochs=4,
            limit_val_batches=0,
            accelerator="cpu",
        )
        trainer.fit(module, dm)
    finally:
        torch.set_num_threads(before)
    return TrainedTiny(module.model.eval(), module.codec, root, dm.train_records, dm.val_records)
