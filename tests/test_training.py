"""Short real training runs on the tiny synthetic set: the CLI, resuming, bad data, and CPU DDP."""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Timer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from vision_attn.config import DecoderConfig, EncoderConfig
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.errors import DataFormatError
from vision_attn.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer, wrap
from vision_attn.lightning_cli import USER_ERRORS, main
from vision_attn.training import VisionAttnModule, lr_scale

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"

TINY_MODEL = {
    "encoder": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2},
    "decoder": {"dim": 48, "depth": 1, "num_heads": 2, "max_len": 48},
    "warmup_steps": 2,
    "val_caption_tokens": 8,
    "val_answer_tokens": 4,
}
TINY_DATA = {"batch_size": 8, "num_workers": 0, "val_max_images": 8}


def flags(prefix: str, values: dict[str, Any]) -> list[str]:
    """{"a": {"b": 1}} -> ["--prefix.a.b", "1"]."""
    out = []
    for k, v in values.items():
        if isinstance(v, dict):
            out += flags(f"{prefix}.{k}", v)
        else:
            out += [f"--{prefix}.{k}", str(v)]
    return out


def datamodule(root: Path) -> VisionAttnDataModule:
    """Its tokenizer goes to the trainer's default_root_dir (see `trainer`)."""
    return VisionAttnDataModule(root=str(root), image_size=32, max_text_len=48, batch_size=8, num_workers=0)


def module(tokenizer: PreTrainedTokenizerFast | None = None) -> VisionAttnModule:
    """Without a tokenizer the model is built in configure_model, from the trainer's DataModule."""
    return VisionAttnModule(
        encoder=EncoderConfig(**TINY_MODEL["encoder"]),
        decoder=DecoderConfig(**TINY_MODEL["decoder"]),
        warmup_steps=2,
        val_caption_tokens=8,
        val_answer_tokens=4,
        tokenizer=tokenizer,
    )


def trainer(root_dir: Path, **kw: Any) -> L.Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0}
    return quiet_trainer(**{**defaults, "default_root_dir": str(root_dir), **kw})


def read_metrics_csv(root: Path) -> list[dict[str, str]]:
    files = sorted(root.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    with files[-1].open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_fit_two_steps_logs_validation_metrics(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo config writes runs/demo/... relative to the working directory
    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = [
        "fit",
        "--config",
        str(DEMO),
        "--data.root",
        str(synthetic_root),
        *flags("model", TINY_MODEL),
        *flags("data", TINY_DATA),
        *flags(
            "trainer",
            {
                "accelerator": "cpu",
                "max_steps": 2,
                "limit_train_batches": 2,
                "limit_val_batches": 1,
                "check_val_every_n_epoch": 1,
                "num_sanity_val_steps": 0,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "log_every_n_steps": 1,
            },
        ),
    ]
    cli = main(args, run=True)
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("val/vqa_accuracy", "val/bleu4", "val/cider", "val/loss", "train/loss"):
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
        assert torch.isfinite(metrics[key])
    assert 0.0 <= float(metrics["val/vqa_accuracy"]) <= 100.0
    # the links: the data follows the model's image size and text length, the model the tokenizer's vocabulary
    assert cli.datamodule.hparams.image_size == 32 and cli.datamodule.hparams.max_text_len == 48
    assert cli.model.model.config.decoder.vocab_size == len(cli.datamodule.tokenizer)
    # the demo's logger and checkpoint callback did their jobs
    rows = read_metrics_csv(tmp_path / "runs" / "demo")
    assert any(r.get("val/cider") for r in rows)
    ckpt = torch.load(tmp_path / "runs/demo/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert json.loads(ckpt["vision_attn"]["tokenizer_json"])  # export needs the tokenizer
    assert ckpt["vision_attn"]["model_config"]["decoder"]["vocab_size"] == len(cli.datamodule.tokenizer)


# ---------------------------------------------------------------------------------------------- resuming


class ResumeProbe(L.Callback):
    """Records the state training (re)starts from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.global_step = trainer.global_step
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())  # its tensors are updated in place
        self.scheduler_last_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_continues_steps_optimizer_and_schedule(synthetic_root: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = datamodule(synthetic_root)
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    # epochs of 2 steps, so that step 4 ends an epoch (mid-epoch resumes are approximate in Lightning)
    first = trainer(tmp_path, max_steps=4, limit_train_batches=2, callbacks=[save], enable_checkpointing=True)
    first.fit(module(), dm)
    assert first.global_step == 4
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    assert saved["lr_schedulers"][0]["last_epoch"] == 4

    probe = ResumeProbe()
    second = trainer(tmp_path, max_steps=6, limit_train_batches=2, callbacks=[probe])
    resumed = module()  # fresh weights: everything must come from the checkpoint
    # weights_only=False: see test_resume_with_default_weights_only (the hyperparameters hold config dataclasses)
    second.fit(resumed, dm, ckpt_path=str(last), weights_only=False)

    assert probe.global_step == 4
    assert second.global_step == 6
    assert saved["state_dict"].keys() == probe.weights.keys()
    for k, v in saved["state_dict"].items():
        assert torch.equal(probe.weights[k], v), k
    saved_opt = saved["optimizer_states"][0]["state"]
    assert saved_opt and probe.optimizer["state"].keys() == saved_opt.keys()
    for i, s in saved_opt.items():
        assert torch.equal(probe.optimizer["state"][i]["exp_avg"], s["exp_avg"])
        assert torch.equal(probe.optimizer["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
        assert float(probe.optimizer["state"][i]["step"]) == 4
    assert probe.scheduler_last_epoch == 4
    assert probe.lr == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    assert second.lr_scheduler_configs[0].scheduler.last_epoch == 6
    # and it trained on: the weights moved away from the checkpoint
    after = resumed.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in saved["state_dict"].items())


def test_resume_with_default_weights_only(synthetic_root: Path, tmp_path: Path) -> None:
    dm = datamodule(synthetic_root)
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer(tmp_path, max_steps=1, callbacks=[save], enable_checkpointing=True).fit(module(), dm)
    again = trainer(tmp_path, max_steps=2)
    again.fit(module(), dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # as `train.py fit --ckpt_path` does
    assert again.global_step == 2


def test_checkpoint_carries_the_tokenizer(synthetic_root: Path, tmp_path: Path) -> None:
    dm = datamodule(synthetic_root)
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer(tmp_path, max_steps=1, callbacks=[save], enable_checkpointing=True).fit(module(), dm)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)["vision_attn"]
    assert wrap(Tokenizer.from_str(saved["tokenizer_json"])).get_vocab() == dm.tokenizer.get_vocab()
    assert saved["model_config"]["decoder"]["vocab_size"] == len(dm.tokenizer)
    # resuming with data whose tokenizer differs is refused, naming the fix
    other = tmp_path / "other_tokenizer.json"
    save_tokenizer(train_tokenizer(["one two three", "four five six"] * 2, vocab_size=300), other)
    changed = VisionAttnDataModule(root=str(synthetic_root), image_size=32, max_text_len=48, tokenizer_file=str(other))
    with pytest.raises(ValueError, match="another tokenizer than the data's.*data.tokenizer_file"):
        trainer(tmp_path, max_steps=2).fit(module(), changed, ckpt_path=str(last), weights_only=False)
    # and so is a module given a tokenizer other than its DataModule's
    with pytest.raises(ValueError, match="differs from the DataModule's"):
        trainer(tmp_path, max_steps=1).fit(module(load_tokenizer(other)), dm)


def test_every_stage_builds_the_model_before_the_checkpoint_loads(synthetic_root: Path, tmp_path: Path) -> None:
    """validate/test/predict and `ckpt_path="last"` (as `--ckpt_path last`) on fresh modules without a tokenizer."""
    dm = datamodule(synthetic_root)

    def run(**kw: Any) -> L.Trainer:
        save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        return trainer(tmp_path, callbacks=[save], enable_checkpointing=True, limit_val_batches=1, **kw)

    run(max_steps=2, limit_train_batches=2).fit(module(), dm)
    last = str(tmp_path / "ckpt" / "last.ckpt")
    resumed = run(max_steps=3, limit_train_batches=2)
    resumed.fit(module(), datamodule(synthetic_root), ckpt_path="last", weights_only=False)
    assert resumed.global_step == 3
    for stage in ("validate", "test"):
        fresh = datamodule(synthetic_root)  # as a new `train.py validate/test --ckpt_path` process has
        (metrics,) = getattr(run(limit_test_batches=1), stage)(module(), fresh, ckpt_path=last, weights_only=False)
        assert f"{'val' if stage == 'validate' else 'test'}/loss" in metrics
        assert fresh.train_records == [] and len(fresh.val_records) == 16  # setup read what the stage needs
    predictions = run(limit_predict_batches=1).predict(module(), datamodule(synthetic_root), ckpt_path=last)
    assert len(predictions) == 1 and len(predictions[0]) == 8 and isinstance(predictions[0][0]["caption"], str)


# ---------------------------------------------------------------------------------------------- optimisation


def _configured(
    dm: VisionAttnDataModule, total_steps: float, callbacks: list | None = None, **hparams: Any
) -> tuple[VisionAttnModule, dict]:
    mod = module(dm.tokenizer)
    mod.hparams.update(hparams)
    # all configure_optimizers reads of the trainer
    mod.trainer = SimpleNamespace(estimated_stepping_batches=total_steps, callbacks=callbacks or [])
    return mod, mod.configure_optimizers()


@pytest.fixture(scope="module")
def tiny_dm(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> VisionAttnDataModule:
    tokenizer = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    dm = VisionAttnDataModule(root=str(synthetic_root), image_size=32, max_text_len=48, tokenizer_out=str(tokenizer))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_lr_schedule_warms_up_then_decays_to_the_floor(tiny_dm: VisionAttnDataModule) -> None:
    mod, conf = _configured(tiny_dm, 100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.05)
    sched = conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lam = sched.lr_lambdas[0]
    assert lam(0) == pytest.approx(0.1) and lam(9) == pytest.approx(1.0)  # linear warmup from lr/10 to lr
    assert lam(10) == pytest.approx(1.0) and lam(55) == pytest.approx(0.525)  # cosine midpoint
    assert lam(100) == pytest.approx(0.05) and lam(150) == pytest.approx(0.05)  # never below the floor
    assert all(lam(s) >= lam(s + 1) for s in range(10, 100))
    # warmup never takes more than half of a short run
    _, short = _configured(tiny_dm, 8, warmup_steps=200)
    assert short["lr_scheduler"]["scheduler"].lr_lambdas[0](4) == pytest.approx(1.0)


class FakeTimer(Timer):
    """Lightning's Timer (what trainer.max_time adds) with the elapsed time set by the test."""

    def __init__(self, budget: float) -> None:
        super().__init__(duration=timedelta(seconds=budget))
        self.elapsed = 0.0

    def time_elapsed(self, stage: str = "train") -> float:
        return self.elapsed


def test_lr_schedule_follows_a_time_budget(tiny_dm: VisionAttnDataModule) -> None:
    """With trainer.max_time the cosine runs over the budget: annealed at its end whatever the step count."""
    timer = FakeTimer(budget=600.0)
    # no epoch or step limit (max_epochs -1): the time budget alone ends training
    _, conf = _configured(tiny_dm, float("inf"), [timer], warmup_steps=10, min_lr_ratio=0.05)
    lam = conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lam(4) == pytest.approx(0.5)  # warm-up counts steps
    assert lam(50) == pytest.approx(1.0)  # no time spent yet
    timer.elapsed = 300.0
    assert lam(50) == pytest.approx(0.525) and lam(5000) == pytest.approx(0.525)  # half the budget: cosine midpoint
    timer.elapsed = 600.0
    assert lam(60) == pytest.approx(0.05)
    # with an epoch limit too, whichever end comes first sets the progress
    _, conf = _configured(tiny_dm, 110, [timer], warmup_steps=10, min_lr_ratio=0.05)
    lam = conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    timer.elapsed = 60.0  # a tenth of the budget, but step 60 is half of the steps
    assert lam(60) == pytest.approx(0.525)
    timer.elapsed = 540.0  # nine tenths of the budget, step 20 a tenth of the steps
    assert lam(20) == pytest.approx(lr_scale(0, 0, 10, 0.9, 0.05))


def test_a_run_needs_an_end(tiny_dm: VisionAttnDataModule) -> None:
    with pytest.raises(ValueError, match="max_epochs, max_steps or max_time"):
        _configured(tiny_dm, float("inf"))


def test_time_budget_alone_trains_and_anneals(synthetic_root: Path, tmp_path: Path) -> None:
    """max_epochs -1 with max_time: training runs until the budget is spent, the rate falling all the way."""
    lrs = LrLog()
    tr = trainer(tmp_path, max_epochs=-1, max_time={"seconds": 6}, callbacks=[lrs])
    tr.fit(module(), datamodule=datamodule(synthetic_root))
    assert tr.current_epoch >= 1  # more than the tiny set's one epoch: the budget, not an epoch count, ended it
    after_warmup = lrs.values[2:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert after_warmup[-1] < 0.6 * after_warmup[0]


class LrLog(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.values.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_weight_decay_only_on_matrices(tiny_dm: VisionAttnDataModule) -> None:
    mod, conf = _configured(tiny_dm, 100)
    decay, no_decay = conf["optimizer"].param_groups
    assert decay["weight_decay"] == mod.hparams.weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in mod.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)  # every parameter once (tied ones once)
    assert "decoder.blocks.0.self_attn.qkv.weight" in decayed and "encoder.vit.patch_embed.proj.weight" in decayed
    assert not any(n.endswith(".bias") or ".norm" in n for n in decayed)
    assert "encoder.vit.pos_embed" not in decayed


def test_decoder_position_embeddings_are_not_decayed(tiny_dm: VisionAttnDataModule) -> None:
    mod, conf = _configured(tiny_dm, 100)
    decayed = {id(p) for p in conf["optimizer"].param_groups[0]["params"]}
    assert id(mod.model.decoder.pos_emb.weight) not in decayed


# ---------------------------------------------------------------------------------------------- bad data


def test_corrupt_image_is_skipped_and_named(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    bad = sorted((root / "train2014").glob("*.jpg"))[5]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg " * 20)
    dm = datamodule(root)
    caplog.set_level(logging.WARNING)
    # one epoch of 6 batches of 8 (drop_last) visits all 48 training images, the bad one included; validation (of
    # the intact val split) runs at the end of the epoch, before the training epoch ends
    t = trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    t.fit(module(), dm)
    assert t.global_step == 6  # no batch was lost: the bad image only shrank its batch
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(bad.name in m for m in warnings), warnings
    assert [m for m in warnings if "unreadable images during" in m] == [
        "skipped 1 unreadable images during training (see the warnings above for which)"
    ]  # counted under training, not under the validation that ran first


def test_malformed_json_fails_before_the_model_is_built(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    captions = root / "annotations" / "captions_train2014.json"
    data = json.loads(captions.read_text())
    data["annotations"][3]["caption"] = 7
    captions.write_text(json.dumps(data))
    dm = datamodule(root)  # reads no file
    mod = module()
    with pytest.raises(DataFormatError) as err:
        trainer(tmp_path).fit(mod, dm)
    message = str(err.value)
    assert str(captions) in message
    assert "annotations[3].caption must be a string, got int" in message
    assert mod.model is None and not (tmp_path / "tokenizer.json").exists()  # prepare_data stopped at the json


def test_train_py_with_a_malformed_json_is_one_error_line(synthetic_root: Path, tmp_path: Path) -> None:
    """The command line says what is wrong in one line (it was the last line of a 50-line traceback)."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    questions = root / "v2_OpenEnded_mscoco_train2014_questions.json"
    data = json.loads(questions.read_text())
    del data["questions"][2]["question_id"]
    questions.write_text(json.dumps(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, str(REPO / "train.py"), *cli_args(root, tmp_path / "run", max_steps=1)]
    out = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ") or "Traceback" in line]
    assert errors == [f"error: {questions}: questions[2] is missing key 'question_id'"], out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- DDP


@pytest.mark.parametrize(
    "class_token",
    [
        True,
        False,
    ],
)
def test_ddp_two_cpu_processes(synthetic_root: Path, tmp_path: Path, class_token: bool) -> None:
    """About 15 s per run on 2 busy cores."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["model"].update(TINY_MODEL)
    cfg["model"]["encoder"] = {**TINY_MODEL["encoder"], "class_token": class_token}
    cfg["data"].update(TINY_DATA, root=str(synthetic_root))
    cfg["trainer"].update(
        default_root_dir=str(tmp_path / "run"),
        check_val_every_n_epoch=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "run")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "run" / "checkpoints")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(config)]
    cmd += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    cmd += ["--trainer.max_steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # 48 images / 2 ranks / 8 per batch = 3 steps: one epoch, then validation gathered across both ranks
    rows = read_metrics_csv(tmp_path / "run")
    val = [r for r in rows if r.get("val/vqa_accuracy")]
    assert val, rows
    assert max(int(r["step"]) for r in rows if r.get("step")) <= 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    # prepare_data wrote the tokenizer once, beside the run; both ranks' models were sized from that file
    written = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    assert ckpt["vision_attn"]["model_config"]["decoder"]["vocab_size"] == len(written)
    assert wrap(Tokenizer.from_str(ckpt["vision_attn"]["tokenizer_json"])).get_vocab() == written.get_vocab()


# ---------------------------------------------------------------------------------------------- run outputs


def cli_args(root: Path, run_dir: Path, **trainer_kw: Any) -> list[str]:
    """`fit` with the demo config, the tiny model and data, and every output under `run_dir`."""
    settings = {
        "accelerator": "cpu",
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "default_root_dir": str(run_dir),
        **trainer_kw,
    }
    return ["fit", "--config", str(DEMO), "--data.root", str(root), *flags("model", TINY_MODEL),
            *flags("data", TINY_DATA), *flags("trainer", settings)]  # fmt: skip


def test_last_checkpoint_holds_the_trained_step_and_every_output_follows_default_root_dir(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epochs of 3 steps, validated at their end; training stops at step 5, in mid-epoch. last.ckpt must hold step 5
    (Lightning's ModelCheckpoint(save_last=True) kept step 3: it rewrites last.ckpt only with a top-k save), the
    best-by-metric file step 3, and nothing may land outside --trainer.default_root_dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    run = tmp_path / "elsewhere" / "run2"
    cli = main(cli_args(synthetic_root, run, max_steps=5, limit_train_batches=3))
    assert cli.trainer.global_step == 5
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert best.name == "best-epoch0-step3.ckpt"
    for name in ("metrics.csv", "hparams.yaml", "config.yaml", "tokenizer.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]  # no runs/demo/ in the working directory

    # a damaged last.ckpt: --ckpt_path last stops with an error naming it and the intact best checkpoint (train.py
    # prints it as one line, as test_train_py_with_a_malformed_json_is_one_error_line shows for bad data)
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 3])
    with pytest.raises(USER_ERRORS) as error:
        main([*cli_args(synthetic_root, run, max_steps=7, limit_train_batches=3), "--ckpt_path", "last"])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{run / 'checkpoints' / 'last.ckpt'} is damaged"), message
    assert f"the newest intact checkpoint is {best} (resume with --ckpt_path {best})" in message


TRAIN_WITH_WORKERS = """
import sys
from vision_attn.lightning_cli import USER_ERRORS, main
main(sys.argv[1:])
"""


def test_loader_workers_die_with_a_killed_trainer(tmp_path: Path) -> None:
    """kill -9 of the trainer in mid-epoch: its DataLoader worker must not live on (one stayed 13 minutes).

    The worker loads ahead of a slower training step, so when the trainer dies it is blocked writing a finished
    batch (786 KB) into a pipe of 64 KB that nobody reads; PyTorch's own parent check never runs then. Without
    `die_with_parent` this test saw the worker alive (sleeping, reparented) in 4 runs of 4.
    """
    import signal
    import time

    from vision_attn.data.synthetic import make_synthetic

    make_synthetic(tmp_path / "data", n_train=300, n_val=8, seed=0, image_size=64, workers=1)
    args = cli_args(tmp_path / "data", tmp_path / "run", max_epochs=10_000, limit_val_batches=0)
    args += ["--data.num_workers", "1", "--data.batch_size", "64", "--model.encoder.image_size", "64"]
    args += ["--model.decoder.dim", "128", "--model.decoder.depth", "2"]  # a step slower than loading a batch
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_WITH_WORKERS, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not workers or not (tmp_path / "run" / "tokenizer.json").exists():
            assert proc.poll() is None, "training ended before its worker started"
            assert time.monotonic() < deadline, "the loader worker never started"
            time.sleep(0.2)
            workers = children()
        time.sleep(6)  # some steps run; the worker loads ahead
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [w for w in workers if _state(w) != "Z"]
        assert not alive, f"workers {alive} outlived the killed trainer"
    finally:
        proc.kill()
        for w in workers:
            if _state(w) != "Z":
                os.kill(w, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
