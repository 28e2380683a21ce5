"""Every experiment YAML in configs/ parses with the training CLI and keeps every value it sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.lightning_cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `train.py <args> --print_config` in-process (nothing is instantiated); return exit code and output."""
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_info:
        mp.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own arguments are there
        main([*args, "--print_config"])
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out + out.err


def assert_subset(expected: Any, got: Any, where: str = "") -> None:
    """Every value set in `expected` (the YAML) appears in `got` (the parsed config), recursively."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: expected a mapping, got {got!r}"
        for key, value in expected.items():
            assert key in got, f"{where}.{key} was dropped by the parser"
            assert_subset(value, got[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: {got!r} != {expected!r}"
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            assert_subset(e, g, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: parsed {got!r}, the YAML says {expected!r}"


def test_there_are_configs() -> None:
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses_and_keeps_its_values(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = print_config(["fit", "--config", str(path)], capsys)
    assert code == 0, out
    parsed = yaml.safe_load(out)
    assert {"trainer", "model", "data"} <= parsed.keys()
    assert_subset(yaml.safe_load(path.read_text()), parsed)
    # linked values are set once, on the model: the data's copies are link targets, not options
    assert "image_size" not in parsed["data"] and "max_text_len" not in parsed["data"]
    assert "tokenizer" not in parsed["model"]
    # the model sections pass the dataclasses' own checks (grid, heads), with a vocabulary as the tokenizer sets it
    ModelConfig(
        EncoderConfig(**parsed["model"]["encoder"]), DecoderConfig(**{**parsed["model"]["decoder"], "vocab_size": 100})
    )


def test_unknown_key_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The parse test above would be worthless if the parser accepted anything."""
    cfg = yaml.safe_load(CONFIGS[0].read_text())
    cfg["model"]["encoder"]["dimm"] = 64
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    code, out = print_config(["fit", "--config", str(bad)], capsys)
    assert code != 0
    assert "dimm" in out


def test_invalid_value_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = print_config(["fit", "--config", str(CONFIGS[0]), "--model.encoder.patch_size", "seven"], capsys)
    assert code != 0
    assert "patch_size" in out


@pytest.mark.parametrize("image_size,want", [(None, 224), (256, 256)])
def test_a_named_encoder_gives_the_data_its_image_size(
    image_size: int | None, want: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vit_b16.yaml names its encoder and leaves image_size unset: the size follows the name (ViT-B/16: 224 px) and
    the link gives the data that size; a size set on the model wins. The weights file is not needed to parse."""
    config = next(p for p in CONFIGS if p.name == "vit_b16.yaml")
    assert "image_size" not in yaml.safe_load(config.read_text())["model"]["encoder"]
    monkeypatch.chdir(tmp_path)  # the trainer's logger makes its folder in the working directory
    monkeypatch.setattr("sys.argv", ["train.py"])
    size = [] if image_size is None else ["--model.encoder.image_size", str(image_size)]
    cli = main(["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "1", *size], run=False)
    assert cli.datamodule.hparams.image_size == want
    encoder = EncoderConfig(**cli.config["model"]["encoder"])
    assert (encoder.image_size, encoder.patch_size, encoder.dim, encoder.class_token) == (want, 16, 768, True)
    assert not Path(encoder.pretrained).exists()
