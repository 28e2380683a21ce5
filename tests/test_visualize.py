"""Attention pictures: a panel per word plus the image and the rollout; the PNGs the commands write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_attention_maps import make_pipeline

from vision_attn import Pipeline
from vision_attn.attention_maps import AttentionResult
from vision_attn.cli import main
from vision_attn.data.tokenizer import save_tokenizer
from vision_attn.visualize import DPI, PANEL_LABEL, attention_figure, count_panels, figure_inches, save_attention_figure


def fake_result(words: list[str], grid: int = 4) -> AttentionResult:
    """One token per word, each map peaked on a different patch; 2 layers, 2 heads."""
    T, N = len(words), grid * grid
    raw = torch.full((2, 2, T, N), 0.1 / N)
    for t in range(T):
        raw[:, :, t, t % N] += 0.9
    maps = raw.mean((0, 1)).view(T, grid, grid)
    return AttentionResult(
        text=" ".join(words),
        tokens=words,
        token_ids=list(range(10, 10 + T)),
        words=words,
        word_tokens=[[t] for t in range(T)],
        token_maps=maps,
        word_maps=maps,
        raw=raw,
        rollout=torch.full((grid, grid), 1.0 / N),
        layer="mean",
    )


def png_size(panels: int) -> tuple[int, int]:
    w, h = figure_inches(panels)
    return round(w * DPI), round(h * DPI)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return make_pipeline()


@pytest.fixture(scope="module")
def model_dir(pipe: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_model")
    pipe.model.save_pretrained(out)
    save_tokenizer(pipe.codec.tok, out / "tokenizer.json")
    return out


@pytest.mark.parametrize("n_words", [0, 1, 7, 13])
def test_figure_has_the_image_a_panel_per_word_and_the_rollout(n_words: int) -> None:
    words = [f"w{i}" for i in range(n_words)]
    fig = attention_figure(Image.new("RGB", (50, 40), "gray"), fake_result(words))
    assert count_panels(fig) == n_words + 2
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() == PANEL_LABEL]
    assert titles[0] == "image" and titles[1:-1] == words and titles[-1].startswith("encoder rollout")
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == (1 if n_words else 0)
    if n_words:
        assert "share of the image" in colour_bars[0].get_ylabel()


def test_save_writes_a_png_of_the_figure_size(tmp_path: Path) -> None:
    words = ["a", "red", "circle."]
    path = save_attention_figure(Image.new("RGB", (64, 64)), fake_result(words), tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == png_size(len(words) + 2)
        # not blank: the heatmaps and text put many colours in it
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100


@pytest.mark.filterwarnings("ignore:Glyph")  # the untrained model writes control characters
def test_caption_command_writes_a_picture_per_image(
    model_dir: Path, pipe: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    g = torch.Generator().manual_seed(0)
    paths = []
    for folder in ("a", "b"):  # the same file name in two folders gets two pictures
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "photo.png")
        Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(paths[-1])
    out_dir = tmp_path / "maps"
    args = ["caption", "--model", str(model_dir), "--json", "--device", "cpu", "--attention-dir", str(out_dir)]
    assert main([*args, *map(str, paths)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(x["attention_png"]).name for x in lines] == ["photo.png", "photo_2.png"]
    for line, path in zip(lines, paths, strict=True):
        res = pipe.caption_maps(str(path))
        assert line["caption"] == res.text == pipe.caption(str(path))
        with Image.open(line["attention_png"]) as im:
            assert im.size == png_size(len(res.words) + 2)  # a panel per word, the image and the rollout


@pytest.mark.filterwarnings("ignore:Glyph")
def test_vqa_command_writes_a_picture(
    model_dir: Path, pipe: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), "teal").save(image)
    q = "what color is the circle?"
    args = ["vqa", "--model", str(model_dir), "--image", str(image), "--question", q, "--device", "cpu"]
    assert main([*args, "--json", "--attention-dir", str(tmp_path / "maps"), "--attention-layer", "-1"]) == 0
    out = json.loads(capsys.readouterr().out)
    res = pipe.answer_maps(str(image), q, layer=-1)
    assert out["answer"] == res.text and Path(out["attention_png"]).name == "scene.vqa.png"
    with Image.open(out["attention_png"]) as im:
        assert im.size == png_size(len(res.words) + 2)
    with pytest.raises(SystemExit, match="without --top-k"):
        main([*args, "--top-k", "2", "--attention-dir", str(tmp_path / "maps")])
