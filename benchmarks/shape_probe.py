"""Diagnostic: how fast the demo's encoder learns shapes on its own, without the text decoder.

    python -m benchmarks.shape_probe --data-root benchmarks/work/suite/shapes64/data            # shape only
    python -m benchmarks.shape_probe --data-root benchmarks/work/suite/shapes64/data --colour   # shape and colour

The encoder of `configs/demo.yaml` (64 px, conv stem, 8x8 grid, 4 blocks of 128) is read out by one cross-attention
with a learned query (the decoder's `CrossAttention` module) and a linear head, and trained with AdamW at the demo's
rate (2e-3, betas 0.9/0.98, decay 0.05, 100 warm-up steps, no clipping) to classify the shape of a one-object set
(`make-synthetic --variant shapes64`, the shape read from its instances file), optionally the colour too. It prints
the validation accuracy every 50 steps: if the encoder learns shapes in a few hundred steps here, a captioner that
takes thousands is slow in its text path or its optimisation, not in its encoder (benchmarks/README.md, "Learning a
new dataset").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vision_attn.config import EncoderConfig
from vision_attn.data.transforms import ImageLoader
from vision_attn.layers import CrossAttention
from vision_attn.models.encoder import ImageEncoder


def load(root: Path, split: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """uint8 images [B, 3, 64, 64], the shape and the colour of each image's first object."""
    inst = json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    files = {im["id"]: im["file_name"] for im in inst["images"]}
    first: dict[int, dict] = {}
    for a in inst["annotations"]:
        first.setdefault(a["image_id"], a)
    ids = sorted(first)
    loader = ImageLoader(64)
    images = torch.stack([loader(root / f"{split}2014" / files[i]) for i in ids])
    return images, [names[first[i]["category_id"]] for i in ids], [first[i]["color"] for i in ids]


class Probe(nn.Module):
    """The demo encoder, one learned query cross-attending to its tokens, a linear head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        cfg = EncoderConfig(image_size=64, patch_size=8, dim=128, depth=4, num_heads=4, stem="conv")
        self.encoder = ImageEncoder(cfg, 128)
        self.query = nn.Parameter(torch.randn(1, 1, 128) * 0.02)
        self.norm = nn.LayerNorm(128)
        self.attn = CrossAttention(128, 4)
        self.head = nn.Linear(128, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, 64, 64] -> logits [B, classes]."""
        kv = self.attn.image_kv(self.encoder(images))
        q = self.norm(self.query.expand(images.shape[0], 1, -1))
        return self.head(self.attn(q, kv)[:, 0])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, required=True, help="a `make-synthetic --variant shapes64` folder")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--colour", action="store_true", help="learn the colour too (a second loss on the same head)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x_train, s_train, c_train = load(args.data_root, "train")
    x_val, s_val, c_val = load(args.data_root, "val")
    shapes, colours = sorted(set(s_train)), sorted(set(c_train))

    def labels(names: list[str], vocab: list[str]) -> torch.Tensor:
        return torch.tensor([vocab.index(n) for n in names])

    y_train, y_val = labels(s_train, shapes), labels(s_val, shapes)
    k_train, k_val = labels(c_train, colours), labels(c_val, colours)
    model = Probe(len(shapes) + len(colours))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.05)
    majority = max((y_val == k).float().mean().item() for k in range(len(shapes)))
    print(f"{len(x_train)} training images; shapes {shapes}; majority shape on val {majority:.3f}")
    start, S = time.perf_counter(), len(shapes)
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, step / 100)
        idx = torch.randint(0, len(x_train), (64,))
        out = model(x_train[idx])
        loss = F.cross_entropy(out[:, :S], y_train[idx])
        if args.colour:
            loss = loss + F.cross_entropy(out[:, S:], k_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            model.eval()
            with torch.no_grad():
                out = model(x_val)
            model.train()
            shape_acc = (out[:, :S].argmax(-1) == y_val).float().mean().item()
            colour_acc = (out[:, S:].argmax(-1) == k_val).float().mean().item()
            print(
                f"step {step}: shape {shape_acc:.3f}"
                + (f", colour {colour_acc:.3f}" if args.colour else "")
                + f" ({time.perf_counter() - start:.0f} s)"
            )


if __name__ == "__main__":
    main()
