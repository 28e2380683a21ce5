"""Attention pictures in the style of Show, Attend and Tell: the image, one panel per word with its map
upsampled and laid over the image, and the encoder rollout.

Drawn with matplotlib's object API on an Agg canvas (`matplotlib.figure.Figure`, no pyplot), so nothing
needs a display and no global backend is switched.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from vision_attn.attention_maps import AttentionResult

DPI = 100
PANEL_LABEL = "panel"  # the label of the image, word and rollout axes (colour bars are not panels)


def upsample(attn: Tensor, side: int) -> np.ndarray:
    """attn [h, w] -> [side, side] by bilinear interpolation (the image is resized to a square for the model)."""
    up = F.interpolate(attn[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def grid_shape(panels: int, columns: int) -> tuple[int, int]:
    """Rows and columns of a figure with `panels` panels, at most `columns` a row."""
    cols = min(columns, panels)
    return math.ceil(panels / cols), cols


def figure_inches(panels: int, columns: int = 6) -> tuple[float, float]:
    """Width and height of the figure (inches; pixels at `DPI`): about 2.2 x 2.35 a panel, plus the colour bar
    and the title."""
    rows, cols = grid_shape(panels, columns)
    return 2.2 * cols + 1.2, 2.35 * rows + 0.7


def fading(name: str, alpha: float) -> ListedColormap:
    """A matplotlib colour map whose opacity rises from 0 (no attention: the image shows through) to `alpha`."""
    colours = colormaps[name](np.linspace(0.0, 1.0, 256))
    colours[:, 3] = alpha * np.linspace(0.0, 1.0, 256)
    return ListedColormap(colours, name=f"{name}_fading")


def attention_figure(
    image: Image.Image,
    result: AttentionResult,
    title: str | None = None,
    columns: int = 6,
    side: int = 224,
    alpha: float = 0.8,
    cmap: str = "jet",
) -> Figure:
    """The figure for one text: 1 + W + 1 panels (image, each word of `result.words`, encoder rollout).

    Word maps share one colour scale (0 to the largest weight of any word), shown by a colour bar in
    "share of the image" units (each map sums to 1 over the patches); the rollout is scaled to its own peak.
    Low attention is transparent, so the image shows through where the decoder did not look.

    Args:
        image: the image as given to the model (any size; shown resized to a square, as the model sees it).
        title: shown above the panels (default: the text).
        columns: panels per row.
        side: pixels of one panel's image.
        alpha: opacity of the highest attention.
        cmap: a matplotlib colour map name.
    """
    words, maps = result.words, result.word_maps  # W, [W, h, w]
    n = len(words) + 2
    rows, cols = grid_shape(n, columns)
    fig = Figure(figsize=figure_inches(n, columns), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.set_axis_off()
    rgb = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    cmap = fading(cmap, alpha)
    vmax = float(maps.max()) if len(words) else 1.0

    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=11, fontweight="bold")
    word_im = None
    for ax, word, m in zip(axes[1:], words, maps, strict=False):
        ax.imshow(rgb)
        word_im = ax.imshow(upsample(m, side), cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_title(word, fontsize=12)
    roll_ax = axes[len(words) + 1]
    roll_ax.imshow(rgb)
    roll = upsample(result.rollout, side)
    roll_ax.imshow(roll, cmap=cmap, vmin=0.0, vmax=float(roll.max()))
    roll_ax.set_title("encoder rollout\n(own scale)", fontsize=10, fontstyle="italic")
    for ax in axes[:n]:
        ax.set_label(PANEL_LABEL)

    if word_im is not None:  # at the right of the whole grid, whatever row the last word is on
        bar = fig.colorbar(word_im, ax=list(axes), shrink=min(0.8, 0.25 * rows + 0.45), pad=0.01, aspect=25)
        which = "mean of decoder layers" if result.layer == "mean" else f"decoder layer {result.layer}"
        bar.set_label(f"attention, {which}\n(share of the image)", fontsize=8)
    fig.suptitle(textwrap.fill(title if title is not None else result.text, 20 * cols), fontsize=12)
    return fig


def save_attention_figure(
    image: Image.Image, result: AttentionResult, path: str | Path, title: str | None = None, **kwargs: Any
) -> Path:
    """Write `attention_figure(...)` as a PNG at `path` (folders are created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = attention_figure(image, result, title, **kwargs)
    fig.savefig(path, format="png")
    return path


def count_panels(fig: Figure) -> int:
    """Panels (image, words, rollout) of a figure made by `attention_figure`."""
    return sum(ax.get_label() == PANEL_LABEL for ax in fig.axes)
