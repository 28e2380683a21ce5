"""Does the decoder find in the image what a question's word names? Cross-attention selectivity per question kind.

    python -m benchmarks.question_lookup --model runs/demo/model --data-root data/synthetic --split val

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
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.record import RESULTS, environment, print_table, write_results
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
    p.add_argument("--out", default=str(RESULTS / "question_lookup_cpu.json"))
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
    table = []
    for (qtype, kind), group in sorted(groups.items()):
        sel = lookup_selectivity(group)
        (at_word, where_word), (anywhere, where_any) = best(sel[:, :, :1]), best(sel)
        table.append(
            {
                "question_kind": qtype,
                "word": kind,
                "questions": len(group),
                "at_word": f"{at_word:.1f}x ({where_word})",
                "up_to_answer": f"{anywhere:.1f}x ({where_any})",
                "selectivity_layer_head_token": sel.round(decimals=2).tolist(),
            }
        )
    columns = [("question_kind", "question kind", ""), ("word", "word", ""), ("questions", "questions", "d")]
    columns += [("at_word", "best head at the word", ""), ("up_to_answer", "best head up to the answer", "")]
    print_table(table, columns)
    payload = {
        "benchmark": "question_lookup",
        "environment": environment(pipe.device, "question_lookup", argv),
        "model": str(args.model),
        "images": len(records),
        "seconds": round(seconds, 1),
        "results": table,
    }
    write_results(Path(args.out), payload)


if __name__ == "__main__":
    main()
