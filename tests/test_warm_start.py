"""Warm start end to end: `train.py fit` from a pretrained language model folder on the built-in set, export, and
every downstream path (Pipeline captions and answers, beam search, ranking, maps, compiled decoding) with the
GPT-2 and Llama families. The folders are tiny random models saved offline (tests/lm)."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
import torch
from lm.fixtures import make_lm_folder
from test_training import DEMO, TINY_DATA, flags

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.tokenizer import TextCodec, load_lm_tokenizer, save_tokenizer
from vision_attn.export import export_checkpoint
from vision_attn.inference import Pipeline
from vision_attn.lightning_cli import main
from vision_attn.models import VisionAttnModel
from vision_attn.tasks import GenerationConfig, caption_prompt, vqa_prompt

ENCODER = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2, "stem": "conv"}


@pytest.fixture(scope="module")
def lm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    for family in ("gpt2", "llama"):
        make_lm_folder(root, family)
    return root


def test_text_layout_of_a_pretrained_tokenizer(lm_root: Path) -> None:
    """Prompts are plain text the LM reads (no task tokens to learn); targets follow after a space and end in EOS."""
    tok = load_lm_tokenizer(lm_root / "llama")
    codec = TextCodec(tok)
    assert not codec.task_tokens
    assert (codec.bos, codec.eos) == (tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>"))
    assert codec.pad == codec.eos  # the tokenizer has no pad token: EOS pads (never attended to nor scored)
    assert tok.decode(caption_prompt(codec)) == "<s>Caption:"
    assert tok.decode(vqa_prompt(codec, " what color? ")) == "<s>Question: what color? Answer:"
    ids, labels = codec.example(vqa_prompt(codec, "what color?"), "red", 48)
    assert tok.decode(ids) == "<s>Question: what color? Answer: red</s>"
    targets = [i for i in labels if i != -100]
    assert tok.decode(targets) == " red</s>"


def read_losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["train/caption_loss"]) for r in csv.DictReader(f) if r.get("train/caption_loss")]


def test_fit_from_a_pretrained_gpt2_then_every_pipeline_path(
    synthetic_root: Path, lm_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    run = tmp_path / "run"
    trainer = {
        "accelerator": "cpu",
        "max_steps": 12,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "default_root_dir": str(run),
    }
    lm = shutil.copytree(lm_root / "gpt2", tmp_path / "gpt2")  # removed before the model folder is loaded
    model = {"encoder": ENCODER, "decoder": {"pretrained": str(lm), "max_len": 64}, "warmup_steps": 2}
    model |= {"lr": 3e-3, "val_caption_tokens": 8, "val_answer_tokens": 4}
    args = ["fit", "--config", str(DEMO), "--data.root", str(synthetic_root), *flags("model", model)]
    cli = main([*args, *flags("data", TINY_DATA), *flags("trainer", trainer)])
    assert cli.trainer.global_step == 12
    cfg = cli.model.model.config.decoder
    assert (cfg.family, cfg.dim, cfg.depth) == ("gpt2", 64, 2)
    losses = read_losses(run)
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses  # it learns
    assert not (run / "tokenizer.json").exists()  # the LM's tokenizer is used, none is trained

    out = tmp_path / "model"
    export_checkpoint(run / "checkpoints" / "last.ckpt", out)
    shutil.rmtree(lm)  # the model folder stands alone: family, sizes, weights and tokenizer
    pipe = Pipeline.from_pretrained(out, device="cpu")
    trained = cli.model.model.eval()
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(3)]  # fmt: skip
    check_pipeline_paths(pipe, images)
    with torch.no_grad():  # the exported weights are the trained ones
        x = torch.stack(images)
        ids = torch.tensor([caption_prompt(pipe.codec) * 3])
        torch.testing.assert_close(pipe.model(x[:1], ids), trained(x[:1], ids), atol=1e-5, rtol=0)


def check_pipeline_paths(pipe: Pipeline, images: list[torch.Tensor]) -> None:
    """Batched equals one by one; beam search, ranking and maps run and agree with greedy where they must."""
    batched = pipe.caption(images)
    assert batched == [pipe.caption(im) for im in images]
    answers = pipe.answer(images, ["what color is the circle?"] * 3)
    assert answers == [pipe.answer(im, "what color is the circle?") for im in images]
    beams = pipe.caption(images, GenerationConfig(num_beams=3))
    assert len(beams) == 3 and all(isinstance(c, str) for c in beams)
    ranking = pipe.rank_answers(images[0], "what color is the circle?", top_k=3, maps="mean")
    probs = [a.probability for a in ranking.answers]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    maps = pipe.caption_maps(images[0])
    n_cross = len(pipe.model.decoder.cross_attns)
    assert maps.raw.shape[0] == n_cross and maps.raw.shape[-1] == pipe.model.config.encoder.grid_size**2


def save_llama_folder(lm_root: Path, out: Path, cross_attn_every: int = 1) -> Path:
    """A captioner from the tiny Llama folder with its gates opened (as if trained: the image matters), saved as a
    model folder."""
    folder = lm_root / "llama"
    codec = TextCodec(load_lm_tokenizer(folder))
    torch.manual_seed(0)
    decoder = DecoderConfig(pretrained=str(folder), max_len=64, cross_attn_every=cross_attn_every)
    model = VisionAttnModel(ModelConfig(EncoderConfig(**ENCODER), decoder, codec.pad, codec.bos, codec.eos))
    for b in model.decoder.blocks:
        if b.cross_attn is not None:
            b.cross_gate.alpha.data.fill_(1.0)
    model.save_pretrained(out)
    save_tokenizer(codec.tok, out / "tokenizer.json")
    return out


@pytest.mark.parametrize("cross_attn_every", [1, 2])
def test_llama_model_folder_and_pipeline_paths(
    lm_root: Path, tmp_path: Path, cross_attn_every: int, compiled_graphs
) -> None:
    out = save_llama_folder(lm_root, tmp_path / "model", cross_attn_every)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert pipe.model.config.decoder.family == "llama" and not pipe.codec.task_tokens
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(3)]  # fmt: skip
    check_pipeline_paths(pipe, images)
    compiled = Pipeline.from_pretrained(out, device="cpu", compile=True)
    assert compiled.caption(images) == pipe.caption(images)
    assert compiled_graphs() >= 1


def test_serve_and_evaluate_a_llama_model_folder(lm_root: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """`vision-attn serve` answers as the Pipeline does, and `vision-attn evaluate` scores a split."""
    import json

    from serving import IMAGES, QUESTIONS, assert_same_answers, expected_caption, expected_vqa

    from vision_attn.cli import main as cli_main
    from vision_attn.serving.harness import b64, post_form, post_json, running_server

    out = save_llama_folder(lm_root, tmp_path / "model")
    pipe = Pipeline.from_pretrained(out, device="cpu")
    with running_server(out, ["--threads", "1"], tmp_path / "serve.log") as server:
        status, got = post_form(f"{server.url}/v1/vqa", {"image": IMAGES[0], "question": QUESTIONS[0]})
        assert status == 200, got
        assert_same_answers(got, expected_vqa(pipe, IMAGES[0], QUESTIONS[0], None))
        status, got = post_json(f"{server.url}/v1/caption", {"image": b64(IMAGES[1])})
        assert status == 200 and got["caption"] == expected_caption(pipe, IMAGES[1], None), got
    assert cli_main(["evaluate", "--model", str(out), "--data-root", str(synthetic_root), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["vqa_accuracy"] <= 100 and "bleu4" in metrics


def test_special_tokens_a_tokenizer_leaves_unnamed_come_from_the_model_config(lm_root: Path) -> None:
    """GPT-2's tokenizer files name no BOS/EOS: the ids come from its config.json (both <|endoftext|>)."""
    tok = load_lm_tokenizer(lm_root / "gpt2")
    codec = TextCodec(tok)
    end = tok.backend_tokenizer.token_to_id("<|endoftext|>")
    assert (codec.bos, codec.eos, codec.pad) == (end, end, end)


@pytest.mark.parametrize(
    ("config", "encoder", "family"), [("vit_gpt2.yaml", "test_vit", "gpt2"), ("vit_smollm2.yaml", "test_vit3", "llama")]
)
def test_warm_start_configs_train_with_only_their_paths_changed(
    config: str,
    encoder: str,
    family: str,
    synthetic_root: Path,
    lm_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped warm-start YAMLs, their downloads replaced by tiny local files of the same kinds (a timm ViT's
    weights, a language-model folder) and their GPU settings by the CPU's: two steps, export, load, caption."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    vit = timm.create_model(encoder, pretrained=False, num_classes=0)
    weights = tmp_path / f"{encoder}.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    model = {"encoder": {"name": encoder, "pretrained": str(weights), "image_size": 64}}
    model["decoder"] = {"pretrained": str(lm_root / family)}
    trainer = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2, "limit_val_batches": 1}
    trainer |= {"num_sanity_val_steps": 0, "enable_progress_bar": False, "default_root_dir": str(run)}
    args = ["fit", "--config", str(DEMO.parent / config), "--data.root", str(synthetic_root)]
    cli = main([*args, *flags("model", model), *flags("data", TINY_DATA), *flags("trainer", trainer)])
    assert cli.trainer.global_step == 2
    assert cli.model.model.config.decoder.family == family
    export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "model")
    pipe = Pipeline.from_pretrained(tmp_path / "model", device="cpu")
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    assert isinstance(pipe.caption(image), str)
