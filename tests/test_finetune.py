"""Fine-tuning controls: parts, freezing, learning rates per part, LoRA (train, resume, export, load without peft)."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from conftest import IMAGE_SIZE, build_tiny_model, quiet_trainer
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from vision_attn.config import DecoderConfig, EncoderConfig
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.export import export_checkpoint
from vision_attn.finetune import (
    LM_LINEARS,
    LoraSettings,
    add_lora,
    lora_targets,
    optimizer_groups,
    parameter_groups,
    part_of,
    pretrained_parts,
    set_trainable,
)
from vision_attn.inference import Pipeline
from vision_attn.models import VisionAttnModel
from vision_attn.training import VisionAttnModule

REPO = Path(__file__).resolve().parents[1]


def datamodule(root: Path) -> VisionAttnDataModule:
    return VisionAttnDataModule(root=str(root), image_size=32, max_text_len=48, batch_size=8, num_workers=0)


def module(**kw: Any) -> VisionAttnModule:
    """The tiny model with a conv stem, whose BatchNorm statistics move whenever the encoder runs in train mode."""
    return VisionAttnModule(
        encoder=EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, stem="conv"),
        decoder=DecoderConfig(dim=48, depth=1, num_heads=2, max_len=48),
        lr=3e-3,
        warmup_steps=1,
        val_caption_tokens=8,
        val_answer_tokens=4,
        **kw,
    )


def trainer(root_dir: Path, **kw: Any) -> L.Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0}
    return quiet_trainer(**{**defaults, "default_root_dir": str(root_dir), **kw})


def snapshot(module: VisionAttnModule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model (BatchNorm statistics included), copied."""
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- parts


def test_every_parameter_belongs_to_one_part() -> None:
    model = build_tiny_model()
    add_lora(model, LoraSettings(r=2))
    groups = parameter_groups(model)
    names = [n for params in groups.values() for n in params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each once (the tied LM head once)
    assert all(n.startswith("encoder.vit.") for n in groups["encoder"])
    assert {"encoder.proj.weight", "decoder.blocks.0.cross_attn.kv.weight", "decoder.blocks.1.norm2.bias"} <= set(
        groups["new"]
    )
    assert "decoder.blocks.0.self_attn.qkv.lora_A.default.weight" in groups["new"]
    lm = set(groups["language_model"])
    assert {"decoder.tok_emb.weight", "decoder.pos_emb.weight", "decoder.norm.weight"} <= lm
    assert "decoder.blocks.0.self_attn.qkv.base_layer.weight" in lm and "decoder.blocks.1.mlp.fc2.base_layer.bias" in lm
    assert not any(n.split(".")[3] in ("norm2", "cross_attn", "cross_gate") for n in lm if ".blocks." in n)
    # the names of the parts to come (the gate, the Llama family's layers) fall where they belong
    assert part_of("decoder.blocks.3.cross_gate") == "new"
    assert part_of("decoder.blocks.3.mlp.fc1.weight") == "language_model"
    assert part_of("decoder.lm_head.weight") == "language_model"


def test_pretrained_parts_follow_the_config() -> None:
    def config(name: str | None = None, enc: str | None = None, dec: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(
            encoder=SimpleNamespace(name=name, pretrained=enc), decoder=SimpleNamespace(pretrained=dec)
        )

    assert pretrained_parts(config()) == set()
    assert pretrained_parts(config(name="vit_small_patch16_224")) == set()  # a named ViT without weights: random
    assert pretrained_parts(config(name="vit_small_patch16_224", enc="vit.safetensors")) == {"encoder"}
    assert pretrained_parts(config(enc="vit.safetensors", dec="gpt2")) == {"encoder", "language_model"}
    # the from-scratch configs
    assert pretrained_parts(SimpleNamespace(encoder=EncoderConfig(), decoder=DecoderConfig())) == set()


# ---------------------------------------------------------------------------------------------- learning rates


def test_optimizer_groups_give_pretrained_parts_their_rate_and_keep_the_decay_split() -> None:
    model = build_tiny_model()
    set_trainable(model, ["language_model"])
    groups = optimizer_groups(model, lr=1e-3, weight_decay=0.05, pretrained_lr=1e-5, pretrained={"encoder"})
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("decay", 1e-3, 0.05),
        ("no_decay", 1e-3, 0.0),
        ("pretrained/decay", 1e-5, 0.05),
        ("pretrained/no_decay", 1e-5, 0.0),
    ]
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    parts = parameter_groups(model)
    assert sorted(grouped["pretrained/decay"] + grouped["pretrained/no_decay"]) == sorted(parts["encoder"])
    assert sorted(grouped["decay"] + grouped["no_decay"]) == sorted(parts["new"])  # the frozen LM is left out
    assert "encoder.vit.pos_embed" in grouped["pretrained/no_decay"]
    assert "encoder.vit.blocks.0.attn.qkv.weight" in grouped["pretrained/decay"]
    assert all(n.endswith(".bias") or ".norm" in n or n.endswith("pos_embed") for n in grouped["pretrained/no_decay"])
    # pretrained_lr=None: one rate, the two groups of earlier checkpoints (so that they resume)
    plain = optimizer_groups(model, lr=1e-3, weight_decay=0.05, pretrained={"encoder"})
    assert [g["name"] for g in plain] == ["decay", "no_decay"]


def test_schedule_scales_each_group_from_its_own_rate(synthetic_root: Path, tmp_path: Path) -> None:
    dm = datamodule(synthetic_root)
    dm.hparams.tokenizer_out = str(tmp_path / "tokenizer.json")
    dm.prepare_data()
    dm.setup("fit")
    mod = module(tokenizer=dm.tokenizer, pretrained_lr=1e-5, freeze=["encoder"])
    # mark the LM pretrained as a config would (decoder.pretrained is read, not loaded, by the optimizer setup)
    mod.model_config.decoder.pretrained = "a pretrained LM folder"
    mod.trainer = SimpleNamespace(estimated_stepping_batches=100, callbacks=[])  # what configure_optimizers reads
    conf = mod.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert [(g["name"], g["initial_lr"]) for g in opt.param_groups] == [
        ("decay", 3e-3),
        ("no_decay", 3e-3),
        ("pretrained/decay", 1e-5),
        ("pretrained/no_decay", 1e-5),
    ]
    frozen = {id(p) for p in parameter_groups(mod.model)["encoder"].values()}
    assert frozen and not any(id(p) in frozen for g in opt.param_groups for p in g["params"])
    for _ in range(30):
        opt.step()
        sched.step()
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == pytest.approx(300 * lrs[2]) and lrs[1] == lrs[0] and lrs[3] == lrs[2]
    assert lrs[0] < 3e-3  # the cosine has begun


# ---------------------------------------------------------------------------------------------- freezing


class ModeProbe(L.Callback):
    """Records, at every training step, which of the encoder's and decoder's modules run in train mode."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        model = pl_module.model
        self.modes.append(
            {
                "vit": model.encoder.vit.training,
                "batchnorm": model.encoder.vit.patch_embed.proj[1].training,
                "cross_attn": model.decoder.blocks[0].cross_attn.training,
                "self_attn": model.decoder.blocks[0].self_attn.training,
            }
        )


@pytest.mark.parametrize("frozen", ["encoder", "language_model"])
def test_frozen_parts_stay_bit_identical_through_training(synthetic_root: Path, tmp_path: Path, frozen: str) -> None:
    """Three optimizer steps, with validation in between (which switches modes and back)."""
    L.seed_everything(0)
    mod, modes, start = module(freeze=[frozen]), ModeProbe(), StartProbe()
    t = trainer(tmp_path, max_steps=3, limit_train_batches=2, limit_val_batches=1, callbacks=[modes, start])
    t.fit(mod, datamodule(synthetic_root))
    assert t.global_step == 3
    before, after = start.weights, snapshot(mod)
    parts = {k: part_of(k) for k in after}
    assert any(p == frozen for p in parts.values())
    for k, v in after.items():
        if parts[k] == frozen:
            assert torch.equal(v, before[k]), f"{k} of the frozen {frozen} changed"
    moved = [k for k, v in after.items() if parts[k] != frozen and not torch.equal(v, before[k])]
    assert any(parts[k] == "new" for k in moved)  # the rest trained
    bn = "encoder.vit.patch_embed.proj.1.running_mean"
    assert (bn in moved) == (frozen != "encoder")  # BatchNorm statistics move exactly when the encoder trains

    for name, p in mod.model.named_parameters():
        if part_of(name) == frozen:
            assert not p.requires_grad and p.grad is None, name
    assert any(p.grad is not None for n, p in mod.model.named_parameters() if part_of(n) == "new")
    optimized = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in mod.model.parameters() if p.requires_grad}
    assert not any(id(p) in optimized for n, p in mod.model.named_parameters() if part_of(n) == frozen)

    assert len(modes.modes) == 3 and all(m["cross_attn"] for m in modes.modes)
    expect_encoder_train = frozen != "encoder"
    assert all(m["vit"] == m["batchnorm"] == expect_encoder_train for m in modes.modes), modes.modes
    assert all(m["self_attn"] == (frozen != "language_model") for m in modes.modes), modes.modes
    mod.train()  # as a later fit, or any caller, may do: the frozen part stays in eval mode
    assert mod.model.encoder.vit.training == (frozen != "encoder") and mod.model.decoder.blocks[0].cross_attn.training


def test_the_command_line_takes_the_fine_tuning_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vision_attn.lightning_cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = [
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--data.root",
        str(tmp_path),
        "--model.freeze",
        "[encoder]",
    ]
    args += ["--model.pretrained_lr", "1e-5", "--model.lora.r", "4", "--model.lora.targets", "[mlp.fc1, mlp.fc2]"]
    cli = main(args, run=False)
    assert cli.model.frozen_parts == ["encoder"] and cli.model.hparams.pretrained_lr == 1e-5
    assert cli.model.lora == LoraSettings(r=4, targets=["mlp.fc1", "mlp.fc2"])


def test_bad_freeze_and_lora_options_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"freeze: unknown part\(s\) \['decoder'\]; choose among"):
        module(freeze=["decoder"])
    with pytest.raises(ValueError, match="remove 'language_model' from freeze"):
        module(freeze=["language_model"], lora=LoraSettings())
    with pytest.raises(ValueError, match="pretrained_lr=0"):
        module(pretrained_lr=0)
    with pytest.raises(ValueError, match="lora.r=0"):
        LoraSettings(r=0)
    decoder = build_tiny_model().decoder
    with pytest.raises(ValueError, match=r"'proj' selects decoder.blocks.0.cross_attn.proj in the cross-attention"):
        lora_targets(decoder, ["proj"])  # a suffix of self_attn.proj and of cross_attn.proj
    with pytest.raises(ValueError, match=r"'cross_attn.kv' selects .* cross-attention sublayer"):
        lora_targets(decoder, ["cross_attn.kv"])
    with pytest.raises(ValueError, match=r"'norm1' selects decoder.blocks.0.norm1, a LayerNorm, not a linear"):
        lora_targets(decoder, ["norm1"])
    with pytest.raises(ValueError, match=r"'qkv_proj' names no module .* choose among \['mlp.fc1', 'mlp.fc2', 'self"):
        lora_targets(decoder, ["qkv_proj"])


# ---------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [(list(LM_LINEARS), list(LM_LINEARS)), (["mlp.fc2"], ["mlp.fc2"]), (["qkv"], ["self_attn.qkv"])],  # suffixes
)
def test_lora_adds_trainable_parameters_only_in_its_targets(targets: list[str], adapted: list[str]) -> None:
    model = build_tiny_model()
    before = {n for n, _ in model.named_parameters()}
    add_lora(model, LoraSettings(r=2, targets=targets))
    set_trainable(model, [])
    params = dict(model.named_parameters())
    # the adapted layers keep their weights (renamed to base_layer); each gains A (r x in) and B (out x r)
    new = {n: p for n, p in params.items() if n.replace(".base_layer.", ".") not in before}
    assert {n.replace(".base_layer.", ".") for n in params if n not in new} == before
    layers = [f"decoder.blocks.{i}.{t}" for i in range(2) for t in adapted]
    assert set(new) == {f"{m}.lora_{ab}.default.weight" for m in layers for ab in "AB"}
    for m in layers:
        base = model.get_submodule(m).get_base_layer()
        assert new[f"{m}.lora_A.default.weight"].shape == (2, base.in_features)
        assert new[f"{m}.lora_B.default.weight"].shape == (base.out_features, 2)
    # trainable: the adapters, the encoder and the new parts (cross-attention in full, never adapted); the LM frozen
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == set(new) | {n for n in params if n not in new and part_of(n) in ("encoder", "new")}
    assert not any(".lora_" in n for n in params if ".cross_attn." in n or ".norm2." in n)
    assert not any(params[n].requires_grad for n in params if n not in new and part_of(n) == "language_model")


class StartProbe(L.Callback):
    """Records the step and the weights training (re)starts from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.global_step = trainer.global_step
        self.weights = snapshot(pl_module)
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())


NO_PEFT = """
import sys, torch
sys.modules["peft"] = None  # any import of peft fails
from vision_attn.inference import Pipeline
pipe = Pipeline.from_pretrained(sys.argv[1], device="cpu")
loaded = [m for m, module in sys.modules.items() if m.startswith("peft") and module is not None]
print(loaded, pipe.model.config.decoder.vocab_size)
"""


def test_lora_trains_resumes_and_exports_merged(synthetic_root: Path, tmp_path: Path) -> None:
    """Train 2 steps with LoRA, resume to 4, export: the folder holds plain weights whose logits equal the LoRA
    model's (float32, atol 1e-5), and loads without peft."""
    L.seed_everything(0)
    dm = datamodule(synthetic_root)
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    first = trainer(tmp_path, max_steps=2, callbacks=[save], enable_checkpointing=True)
    first.fit(module(lora=lora), dm)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)  # LoraSettings (a hyper-parameter) is allowed
    assert saved["vision_attn"]["lora"] == dataclasses.asdict(lora)
    assert any(".lora_B." in k for k in saved["state_dict"])

    # resume: the adapters are in place before Lightning restores the weights and the optimizer
    probe = StartProbe()
    second = trainer(tmp_path, max_steps=4, callbacks=[probe])
    resumed = module(lora=lora)
    second.fit(resumed, dm, ckpt_path=str(last))
    assert probe.global_step == 2 and second.global_step == 4
    assert probe.weights.keys() == {k.removeprefix("model.") for k in saved["state_dict"]}
    for k, v in saved["state_dict"].items():
        assert torch.equal(probe.weights[k.removeprefix("model.")], v), k
    assert probe.optimizer["state"].keys() == saved["optimizer_states"][0]["state"].keys()
    # other adapters than the checkpoint's are refused, naming the option
    with pytest.raises(ValueError, match=r"trained with model.lora=.*'r': 4.*set model.lora"):
        trainer(tmp_path, max_steps=3).fit(module(lora=LoraSettings(r=8)), dm, ckpt_path=str(last))
    with pytest.raises(ValueError, match=r"this run has model.lora=None"):
        trainer(tmp_path, max_steps=3).fit(module(), dm, ckpt_path=str(last))

    # export the resumed run's weights
    final = tmp_path / "final.ckpt"
    second.save_checkpoint(final)
    model = resumed.model.eval()
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # the adapters learned: merging them matters
    folder = tmp_path / "model"
    export_checkpoint(final, folder)
    stored = load_file(str(folder / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in stored)
    plain = VisionAttnModel(model.config).state_dict()
    assert set(stored) == set(plain) - {"decoder.lm_head.weight"}

    pipe = Pipeline.from_pretrained(folder, device="cpu")
    images = torch.randint(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    ids = torch.randint(3, model.config.decoder.vocab_size, (3, 12))
    with torch.no_grad():
        expected, got = model(images, ids), pipe.model(images, ids)
    assert expected.dtype == got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the adapters changed the model: the merged folder is not the base weights
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.enable_adapters(False)
        assert not torch.allclose(model(images, ids), expected, atol=1e-5)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", NO_PEFT, str(folder)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["[]", str(model.config.decoder.vocab_size)]
