"""Do the attention maps point at what the words name? The pointing game on the built-in scenes.

    python benchmarks/pointing_game.py --model runs/demo/model --data-root data/synthetic --split val

Captions every image and answers its colour and shape questions (greedy), and for each generated colour or
shape word that names exactly one object of the scene checks whether the peak of the word's map (per decoder
layer, the layer mean, and two word-agnostic controls) lies inside that object's box. Prints a table against
the chance rate and writes a json (default benchmarks/results/pointing_game_cpu.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vision_attn.data.layout import find_split_files, read_split
from vision_attn.inference import Pipeline
from vision_attn.pointing import pointing_game, read_scenes, summarise


def table(summary: dict) -> str:
    tasks = list(summary)
    maps = list(summary[tasks[0]]["hit_rate"])
    head = "| map | " + " | ".join(f"{t} (n={summary[t]['n']})" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for m in maps:
        cells = [f"{summary[t]['hit_rate'][m]:.1%} ({summary[t]['ratio_to_chance'][m]:.1f}x)" for t in tasks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append(
        "| chance: box area / image area | " + " | ".join(f"{summary[t]['chance_box_area']:.1%}" for t in tasks) + " |"
    )
    lines.append(
        "| chance: random patch | " + " | ".join(f"{summary[t]['chance_random_patch']:.1%}" for t in tasks) + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder from `vision-attn export`")
    p.add_argument("--data-root", required=True, help="the built-in dataset (needs annotations/instances_*.json)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/pointing_game_cpu.json")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
    root = Path(args.data_root)
    records = read_split(root, args.split)[: args.max_images]
    instances = find_split_files(root, args.split).instances_json
    if instances is None:
        raise SystemExit(
            f"no annotations/instances_{args.split}2014.json in {root}: the pointing game needs object boxes "
            "(the built-in dataset has them: vision-attn make-synthetic)"
        )
    start = time.perf_counter()
    rows = pointing_game(pipe, records, read_scenes(instances))
    seconds = time.perf_counter() - start
    summary = summarise(rows)
    # a barely trained model may name no object at all: an empty summary is a result too, not a crash
    print(table(summary) if summary else "no generated word names exactly one object of its scene")
    result = {
        "command": "python benchmarks/pointing_game.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "model": str(args.model),
        "images": len(records),
        "device": str(pipe.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "seconds": round(seconds, 1),
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
