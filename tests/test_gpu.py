"""On a CUDA GPU: compiled (CUDA-graph) decoding against eager, bf16-mixed training, the Trainer with the real
DataModule, and the Pipeline's bf16 default. Skipped without CUDA (tests/conftest.py); `benchmarks/gpu_suite.sh`
runs them first (`pytest -m gpu`), and together they take well under a minute there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import quiet_trainer
from torch import Tensor

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.layout import read_split
from vision_attn.data.tokenizer import TextCodec, save_tokenizer
from vision_attn.decoding import CompiledDecoder
from vision_attn.evaluation import evaluate_records
from vision_attn.inference import Pipeline
from vision_attn.models import VisionAttnModel, text_loss
from vision_attn.tasks import GenerationConfig, generate
from vision_attn.training import VisionAttnModule

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
# prompts of different lengths, so batches are left-padded (1 token up to 6)
PROMPTS = [[1, 3], [1, 4, 7, 9, 11, 5], [1], [1, 4, 20, 5]]


def cudagraph_skips() -> int:
    """How often inductor ran a compiled graph without CUDA graphs (it says why in its log) since the counters were
    last cleared (`compiled_graphs` clears them)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


# ---------------------------------------------------------------------------------------------- decoding


def test_compiled_decoder_equals_eager_in_float32(
    make_model: Callable[..., VisionAttnModel], images: Tensor, compiled_graphs: Callable[[], int]
) -> None:
    """Greedy and beams, left-padded prompts, a batch padded to a power of two, `image_index`: the CUDA-graph step
    gives eager decoding's tokens, and its scores to float32 rounding."""
    model, x = make_model().to(CUDA), images.to(CUDA)
    compiled = CompiledDecoder(model)
    cases: list[dict[str, Any]] = [
        {"prompts": PROMPTS[:3], "num_beams": 1},  # 3 rows, padded to 4
        # 4 rows: the first case's shape (its buffers are reused) with other images, through image_index
        {"prompts": PROMPTS, "num_beams": 1, "image_index": torch.tensor([0, 1, 1, 3], device=CUDA)},
        {"prompts": PROMPTS[:3], "num_beams": 3},  # 4 x 3 rows
    ]
    for case in cases:
        n = len(case["prompts"])
        imgs = x if "image_index" in case else x[:n]
        config = GenerationConfig(max_new_tokens=10, num_beams=case["num_beams"])
        eager = generate(model, imgs, case["prompts"], config, image_index=case.get("image_index"))
        fast = generate(model, imgs, case["prompts"], config, image_index=case.get("image_index"), compiled=compiled)
        assert fast.sequences == eager.sequences, case
        assert fast.scores == pytest.approx(eager.scores, abs=1e-4)
        assert len(fast.sequences) == n and any(len(s) >= 3 for s in fast.sequences)
    assert len(compiled._buffers) == 2  # rows 4 and 12: the repeated shape reused its buffers
    assert compiled_graphs() == 2  # one graph per shape: compiled, not an eager fallback
    assert cudagraph_skips() == 0  # and replayed as CUDA graphs, not as plain inductor kernels


def test_compiled_decoder_in_bf16_gives_most_texts_of_eager(
    make_model: Callable[..., VisionAttnModel], compiled_graphs: Callable[[], int]
) -> None:
    """Under bf16 autocast (how the Pipeline runs on a GPU) fused kernels round differently from eager ones and may
    break a near-tie the other way: what holds is that most sequences are the same (here at least 3 in 4)."""
    model = make_model().to(CUDA)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(CUDA)
    prompts = [PROMPTS[i % 4] for i in range(16)]
    config = GenerationConfig(max_new_tokens=12)
    compiled = CompiledDecoder(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = generate(model, x, prompts, config)
        fast = generate(model, x, prompts, config, compiled=compiled)
    same = sum(a == b for a, b in zip(fast.sequences, eager.sequences, strict=True))
    assert same >= 12, f"{same} of 16 sequences equal"
    assert len({tuple(s) for s in eager.sequences}) > 4  # varied outputs, so the comparison means something
    assert compiled_graphs() == 1 and cudagraph_skips() == 0


# ---------------------------------------------------------------------------------------------- training


def test_bf16_mixed_training_is_finite_and_the_loss_falls(make_config: Callable[..., ModelConfig]) -> None:
    """50 steps on one batch under bf16 autocast with fused AdamW (what `VisionAttnModule` uses on a GPU): every loss
    is finite and the model memorises the batch (on CPU the same run goes from 4.1 to 0.16)."""
    torch.manual_seed(0)
    model = VisionAttnModel(make_config()).to(CUDA).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g).to(CUDA)
    ids = torch.randint(6, model.config.decoder.vocab_size, (8, 12), generator=g).to(CUDA)
    labels = torch.cat([ids[:, 1:], torch.full((8, 1), -100, device=CUDA)], dim=1)
    losses = []
    for _ in range(50):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(images, ids)
        loss = text_loss(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    curve = torch.stack(losses).float().cpu()
    assert torch.isfinite(curve).all(), curve
    assert curve[-5:].mean() < 0.25 * curve[:5].mean(), curve


class BatchProbe(VisionAttnModule):
    """Notes, per training batch, whether the loader handed its images over in pinned memory."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pinned: list[bool] = []

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if self.trainer.training and "images" in batch:
            self.pinned.append(batch["images"].is_pinned())
        return batch


@pytest.mark.filterwarnings("ignore:You have overridden `on_before_batch_transfer`")  # BatchProbe's, on purpose
def test_trainer_with_the_datamodule_runs_on_the_gpu(synthetic_root: Path, tmp_path: Path) -> None:
    """bf16-mixed Lightning training on the real DataModule (2 workers, pinned memory), then validation's generation
    and metrics. Uncompiled here to stay quick; the suite's `fit` stage trains the compiled ViT-B/16."""
    dm = VisionAttnDataModule(
        root=str(synthetic_root), image_size=32, max_text_len=48, batch_size=8, num_workers=2, val_max_images=8
    )
    module = BatchProbe(
        encoder=EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
        decoder=DecoderConfig(dim=48, depth=1, num_heads=2, max_len=48),
        compile=False,
        val_caption_tokens=8,
        val_answer_tokens=4,
        tokenizer=dm.tokenizer,
    )
    trainer = quiet_trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=6,  # one epoch of the 48 images, then validation
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 6
    assert module.pinned == [True] * 6
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/vqa_accuracy" in trainer.callback_metrics and "val/bleu4" in trainer.callback_metrics
    assert next(module.model.parameters()).device.type == "cuda"


# ---------------------------------------------------------------------------------------------- inference


@pytest.fixture
def model_dir(
    synthetic_root: Path,
    make_config: Callable[..., ModelConfig],
    make_model: Callable[..., VisionAttnModel],
    tmp_path: Path,
) -> Path:
    """A model folder: the tiny model with varied outputs and the DataModule's tokenizer of the tiny set."""
    tokenizer = VisionAttnDataModule(root=str(synthetic_root)).tokenizer
    model = make_model(make_config(vocab_size=TextCodec(tokenizer).vocab_size, max_len=64))
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    return tmp_path


def test_pipeline_runs_in_bf16_and_evaluation_gives_its_texts(model_dir: Path, synthetic_root: Path) -> None:
    """On a GPU the Pipeline decodes under bf16 autocast by default (weights stay float32), and `evaluate_records`
    gives `caption`'s and `answer`'s texts for the same images: one batch each way, so the same shapes and kernels."""
    records = read_split(synthetic_root, "val")[:6]
    pipe = Pipeline.from_pretrained(model_dir, device="cuda", batch_size=64)
    assert pipe.bf16 and next(pipe.model.parameters()).dtype == torch.float32
    dtypes: set[torch.dtype] = set()
    hook = pipe.model.decoder.lm_head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    preds = evaluate_records(pipe, records)
    captions = pipe.caption([str(r.path) for r in records])
    questions = [(str(r.path), q) for r in records for q in r.questions]
    answers = pipe.answer([p for p, _ in questions], [q.question for _, q in questions])
    hook.remove()
    assert dtypes == {torch.bfloat16}
    assert [preds.captions[r.image_id] for r in records] == captions
    assert len(questions) > 20 and [preds.answers[q.question_id] for _, q in questions] == answers
