"""Does the decoder find in the image what a question's word names? Cross-attention selectivity per question kind.

    python benchmarks/question_lookup.py --model runs/demo/model --data-root data/synthetic --split val

For the first word of each question that names some objects of its scene but not all (a colour, a shape, or its
plural: "how many circles can you see?"), the prompt is teacher-forced and every decoder cross-attention head is
read at that word and at each prompt token after it (`vision_attn.pointing.question_lookup`). Selectivity is the
mean attention a patch of a named object gets over the mean a patch of another object gets: 1 is no preference;
a head that finds the named objects scores well above it. Prints, per question kind and word kind, the best head
at the word itself and the best head at any token up to the answer, and writes a json (default
benchmarks/results/question_lookup_cpu.json, the whole [L, H, K] table per group).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

from vision_attn.data.layout import find_split_files, read_split
from vision_attn.inference import Pipeline
from vision_attn.pointing import lookup_selectivity, question_lookup, read_scenes


def best(sel: torch.Tensor) -> tuple[float, str]:
    """[L, H, K] -> the highest selectivity and where: "layer.head" (+k tokens after the word)."""
    L, H, K = sel.shape
    i = int(sel.flatten().argmax())
    layer, head, k = i // (H * K), i // K % H, i % K
    return sel.flatten()[i].item(), f"{layer}.{head}" + (f" +{k}" if k else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder from `vision-attn export`")
    p.add_argument("--data-root", required=True, help="a dataset with annotations/instances_*.json (the built-in one)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/question_lookup_cpu.json")
    args = p.parse_args(argv)

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    root = Path(args.data_root)
    records = read_split(root, args.split)[: args.max_images]
    instances = find_split_files(root, args.split).instances_json
    if instances is None:
        raise SystemExit(f"no annotations/instances_{args.split}2014.json in {root}: the look-up needs object boxes")
    start = time.perf_counter()
    rows = question_lookup(pipe, records, read_scenes(instances))
    seconds = time.perf_counter() - start
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        groups[(r["question_type"], r["kind"])].append(r)
    summary = {}
    print("| question kind | word | questions | best head at the word | best head up to the answer |")
    print("|---|---|---|---|---|")
    for (qtype, kind), sel_rows in sorted(groups.items()):
        sel = lookup_selectivity(sel_rows)
        (at_word, where_word), (anywhere, where_any) = best(sel[:, :, :1]), best(sel)
        print(f"| {qtype} | {kind} | {len(sel_rows)} | {at_word:.1f}x ({where_word}) | {anywhere:.1f}x ({where_any}) |")
        summary[f"{qtype}/{kind}"] = {
            "questions": len(sel_rows),
            "best_at_word": [round(at_word, 2), where_word],
            "best_up_to_answer": [round(anywhere, 2), where_any],
            "selectivity_layer_head_token": sel.round(decimals=2).tolist(),
        }
    result = {
        "command": "python benchmarks/question_lookup.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "model": str(args.model),
        "images": len(records),
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
