"""The benchmark scripts on CPU at the demo size for a couple of steps, and the FLOP formula."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from conftest import build_tiny_model, tiny_config
from serving import serve_model_dir_fixture  # noqa: F401  (a fixture)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vision_attn.data.datamodule import training_text
from vision_attn.data.layout import read_split
from vision_attn.data.synthetic.variants import VARIANTS
from vision_attn.data.tokenizer import TextCodec, save_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]


def bench(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import `benchmarks.<name>` (benchmarks/ is not installed; the repository root may not be on sys.path)."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module(f"benchmarks.{name}")


def positive(row: dict, keys: list[str]) -> None:
    for k in keys:
        assert isinstance(row[k], float | int) and row[k] > 0, f"{row['variant']}: {k} = {row[k]!r}"


def test_train_throughput_writes_results(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    train = bench("train_throughput", monkeypatch)
    out = tmp_path / "train.json"
    args = ["--device", "cpu", "--size", "demo", "--batch", "2", "--steps", "2", "--warmup", "1"]
    args += ["--trainer-steps", "2", "--data-root", str(synthetic_root), "--workers", "0", "--out", str(out)]
    train.main(args)
    payload = json.loads(out.read_text())
    assert payload["environment"]["torch"] == torch.__version__
    assert payload["peak_tflops_measured"] > 0
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"peer", "ours", "trainer"}
    for row in rows.values():
        positive(row, ["images_per_s", "tokens_per_s", "step_ms", "tflops", "mfu_measured_peak", "vs_peer"])
        assert len(row["steps_ms"]) == 2
    assert rows["peer"]["vs_peer"] == 1.0
    assert rows["trainer"]["vocab_size"] == 423  # the trained tokenizer was padded to the demo vocabulary


def test_generate_latency_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled_graphs):
    gen = bench("generate_latency", monkeypatch)
    out = tmp_path / "generate.json"
    args = ["--device", "cpu", "--size", "demo", "--new-tokens", "6", "--reps", "1", "--warmup", "0"]
    gen.main([*args, "--batch-sizes", "1,2", "--beams", "1,3", "--variants", "peer,ours", "--out", str(out)])
    payload = json.loads(out.read_text())
    cases = {(r["variant"], r["batch"], r["beams"]) for r in payload["results"]}
    # every case ran (and produced exactly 6 tokens per output, or main raised)
    assert cases == {(v, b, k) for v in ("peer", "ours") for b in (1, 2) for k in (1, 3)}
    for row in payload["results"]:
        positive(row, ["latency_ms", "captions_per_s", "new_tokens_per_s", "speedup_vs_peer"])
    # the compiled decoder (one shape: compiling takes seconds on CPU) gives ours' tokens
    gen.main([*args, "--batch-sizes", "2", "--beams", "3", "--variants", "ours,ours_compiled", "--out", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert rows.keys() == {"ours", "ours_compiled"}
    assert rows["ours_compiled"]["same_tokens_as_ours"] == 1.0
    assert compiled_graphs() == 1  # it really ran compiled


def test_forward_flops_formula_counts_every_matmul(monkeypatch: pytest.MonkeyPatch):
    """The formula equals torch's FLOP counter (attention through the math kernel, which it can count)."""
    common = bench("peers", monkeypatch)
    from vision_attn.models import VisionAttnModel

    size = common.Size("t", 32, 8, 32, 2, 2, "patch", True, 32, 2, 2, 60)
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(6, 60, (2, 12))
    ours, peer = VisionAttnModel(common.ours_config(size)).eval(), common.build_peer(size).eval()
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        with FlopCounterMode(display=False) as ours_count:
            ours(images, ids)
        with FlopCounterMode(display=False) as peer_count:
            peer(pixel_values=images, decoder_input_ids=ids)
    assert ours_count.get_total_flops() == 2 * common.forward_flops(size, 12, size.num_patches)["total"]
    # the peer attends to the class token too; its unused ViT pooler (a D x D matmul) is not in the formula
    peer_formula = 2 * common.forward_flops(size, 12, size.num_patches + 1)["total"]
    assert peer_count.get_total_flops() == pytest.approx(peer_formula + 2 * 2 * size.enc_dim**2)


@pytest.mark.parametrize(
    ("device", "compile", "expected"), [("cuda", None, True), ("cpu", None, False), ("cuda", False, False)]
)
def test_compile_switch_follows_the_training_device(device: str, compile: bool | None, expected: bool):
    """`model.compile: null` means on for a GPU, although Lightning calls configure_model before moving the module."""
    from vision_attn.config import DecoderConfig, EncoderConfig
    from vision_attn.data.tokenizer import train_tokenizer
    from vision_attn.training import VisionAttnModule

    module = VisionAttnModule(
        encoder=EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
        decoder=DecoderConfig(dim=32, depth=1, num_heads=2),
        compile=compile,
        tokenizer=train_tokenizer(["a red circle on the left", "a blue square at the top"], 80),
    )
    # as Trainer.fit: the strategy knows the device; the tokenizer was given, so no DataModule is asked for one
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), datamodule=None)
    module.configure_model()
    assert module._compiled is expected


def test_serve_throughput_checks_every_answer_and_writes_results(
    serve_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve = bench("serve_throughput", monkeypatch)
    out = tmp_path / "serve.json"
    args = ["--model", str(serve_model_dir), "--clients", "4", "--rounds", "2", "--repeats", "1"]
    assert serve.main([*args, "--idle-seconds", "0.5", "--threads", "1", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["every_answer_equals_its_lone_answer"] and payload["settings"]["requests_per_run"] == 8
    run = payload["runs"]["new"][0]
    assert run["answers_per_s"] > 0 and run["answers_unlike_lone"] == 0 and run["idle_cpu_percent_of_a_core"] < 50


def test_suite_quick_trains_and_scores_each_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick end to end on a VQA-only variant and one with captions: make, fit, export, evaluate, tables."""
    suite = bench("suite", monkeypatch)
    out = tmp_path / "suite.json"
    payload = suite.main(["--quick", "--variants", "shapes64,counting", "--work", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    kinds = {(r["variant"], r["kind"]) for r in payload["results"]}
    assert kinds == {(v, k) for v in ("shapes64", "counting") for k in VARIANTS[v].question_kinds}
    for row in payload["results"]:
        assert 0 <= row["accuracy"] <= 100 and 0 <= row["majority"] <= 100 and row["questions"] > 0
    shapes64, counting = payload["summary"]
    assert shapes64["bleu4"] is None and shapes64["questions"] == 8 * 4  # VQA only: 8 val images, 4 questions each
    assert isinstance(counting["bleu4"], float) and counting["questions"] == 8 * 6
    assert (tmp_path / "quick" / "counting" / "run" / "model" / "model.safetensors").is_file()


def test_question_lookup_writes_results(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrained tiny model with the tokenizer of the tiny set, so that its colour and shape words are tokens."""
    tokenizer = train_tokenizer(training_text(read_split(synthetic_root, "train")))
    config = tiny_config(vocab_size=TextCodec(tokenizer).vocab_size, max_len=64)
    model_dir = tmp_path / "model"
    build_tiny_model(config).save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir / "tokenizer.json")
    lookup = bench("question_lookup", monkeypatch)
    out = tmp_path / "lookup.json"
    lookup.main(["--model", str(model_dir), "--data-root", str(synthetic_root), "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["environment"]["torch"] == torch.__version__ and payload["images"] == 16
    layers, heads = config.decoder.depth, config.decoder.num_heads
    kinds = {(r["question_kind"], r["word"]) for r in payload["results"]}
    assert ("shape", "color") in kinds and ("color", "category") in kinds  # "...the red object?", "...the circle?"
    for row in payload["results"]:
        sel = torch.tensor(row["selectivity_layer_head_token"])
        assert sel.shape[:2] == (layers, heads) and sel.shape[2] >= 1 and (sel >= 0).all()
        assert row["at_word"].endswith(")") and row["questions"] >= 1
