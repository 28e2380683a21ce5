"""Generalisation suite: one training config, unchanged but for `data.root`, on synthetic data that differs in kind.

    python -m benchmarks.suite                          # CPU: every variant, configs/demo.yaml's 15 minutes each
    python -m benchmarks.suite --variants shapes64,relations --train 2000
    python -m benchmarks.suite --quick                  # a smoke run of every stage (about a minute), not a figure
    python -m benchmarks.suite -- --trainer.max_time 00:00:05:00    # flags after `--` go to every `train.py fit`

For each variant of `vision_attn/data/synthetic/variants.py` (demo, shapes64, relations, counting):
1. its data under --work/<variant>/data (`make_synthetic`, the training and validation sizes below unless --train
   and --val say otherwise; kept, and remade only when the sizes or the seed change);
2. `train.py fit --config configs/demo.yaml --data.root <data> --trainer.default_root_dir <run>` (run =
   --work/<variant>/run, emptied first), then `vision-attn export <run>/checkpoints/last.ckpt <run>/model` and
   `vision-attn evaluate --model <run>/model --data-root <data> --split val --baseline-split train --out <run>`,
   as the Makefile's `demo` target does (with --no-meteor: the table reports BLEU-4 and CIDEr);
3. from `<run>/metrics.json`: accuracy per question kind against the majority-answer baseline (the most common
   training answer of the kind), and BLEU-4 and CIDEr where the variant has captions.
Prints the table per kind and one per variant; writes benchmarks/results/suite_cpu.json (--quick: under --work).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers import SIZES
from benchmarks.record import RESULTS, print_table, report, run_python
from vision_attn.data.layout import read_split
from vision_attn.data.synthetic import make_synthetic
from vision_attn.data.synthetic.variants import VARIANTS

log = logging.getLogger("benchmarks.suite")
SIZE = SIZES["demo"]  # configs/demo.yaml's model, whatever the data
# training and validation images per variant: the demo as the Makefile makes it; the others sized so that a
# 15-minute CPU run sees each image a few times (shapes64's single objects need fewer)
DATA_SIZES = {"demo": (20000, 1000), "shapes64": (4000, 500), "relations": (9800, 500), "counting": (9800, 500)}
# --quick: a model small enough that fit, export and evaluate take seconds
QUICK_FIT = [
    "--trainer.max_steps", "4", "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
    "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
    "--model.encoder.image_size", "32", "--model.encoder.dim", "32", "--model.encoder.depth", "1",
    "--model.encoder.num_heads", "2", "--model.decoder.dim", "32", "--model.decoder.depth", "1",
    "--model.decoder.num_heads", "2", "--model.warmup_steps", "2", "--data.batch_size", "8", "--data.num_workers", "0",
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--train", type=int, help="training images of every variant (default: its own, in DATA_SIZES)")
    p.add_argument("--val", type=int, help="validation images of every variant (default: its own)")
    p.add_argument("--eval-images", type=int, help="val images `vision-attn evaluate` scores (default: all)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/suite"), help="data and runs (git-ignored)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, here and in every subprocess")
    p.add_argument("--seed", type=int, default=0, help="the data's seed (training keeps configs/demo.yaml's)")
    p.add_argument("--quick", action="store_true", help="tiny data and model for a smoke run; results under --work")
    p.add_argument("--out", type=Path, help="results json (default: benchmarks/results/suite_cpu.json)")
    p.add_argument("extra", nargs="*", help="more `train.py fit` flags for every variant, after --")
    args = p.parse_args(argv)
    args.variants = args.variants.split(",")
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.quick:  # its own folder, so a full run's data stays
        args.work = args.work / "quick"
        args.train, args.val, args.eval_images = args.train or 48, args.val or 8, args.eval_images or 8
    args.out = args.out or (args.work / "suite_quick.json" if args.quick else RESULTS / "suite_cpu.json")
    args.work = args.work.resolve()  # the subprocesses run in the repository
    return args


def ensure_data(name: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The variant's data folder, made unless its stamp says it holds these sizes and this seed."""
    n_train, n_val = DATA_SIZES[name]
    made = {"variant": name, "train": args.train or n_train, "val": args.val or n_val, "seed": args.seed}
    root = args.work / name / "data"
    stamp = root / ".complete.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == made:
        return root, made | {"make_s": 0.0}
    shutil.rmtree(root, ignore_errors=True)
    log.info("%s: making %d + %d images in %s", name, made["train"], made["val"], root)
    t0 = time.monotonic()
    make_synthetic(root, made["train"], made["val"], seed=args.seed, workers=args.threads, variant=name)
    stamp.write_text(json.dumps(made) + "\n")
    return root, made | {"make_s": time.monotonic() - t0}


def train_and_score(name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fit, export and evaluate one variant; its metrics.json and the seconds each took."""
    run = args.work / name / "run"
    shutil.rmtree(run, ignore_errors=True)  # LightningCLI refuses to overwrite an earlier run's config.yaml
    fit = ["train.py", "fit", "--config", "configs/demo.yaml", "--data.root", str(data)]
    fit += ["--trainer.default_root_dir", str(run), *(QUICK_FIT if args.quick else []), *args.extra]
    fit_s = run_python(fit, args.threads, run / "fit.log")
    export = ["-m", "vision_attn.cli", "export", str(run / "checkpoints" / "last.ckpt"), str(run / "model")]
    run_python(export, args.threads, run / "export.log")
    evaluate = ["-m", "vision_attn.cli", "evaluate", "--model", str(run / "model"), "--data-root", str(data)]
    evaluate += ["--split", "val", "--baseline-split", "train", "--out", str(run), "--no-meteor"]
    evaluate += ["--max-images", str(args.eval_images)] if args.eval_images else []
    eval_s = run_python(evaluate, args.threads, run / "evaluate.log")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": str(run), "fit_s": fit_s, "eval_s": eval_s, "metrics": metrics}


def question_counts(data: Path, eval_images: int | None) -> Counter[str]:
    """Questions per kind among the val images evaluate scored (the first `eval_images` by id, as it takes them)."""
    return Counter(q.question_type for r in read_split(data, "val")[:eval_images] for q in r.questions if q.answers)


def rows_of(name: str, result: dict[str, Any], counts: Counter[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per kind: accuracy, majority baseline, their difference; and the variant's summary row."""
    m = result["metrics"]
    kinds = m.get("per_question_type_vs_majority", {})
    order = [k for k in VARIANTS[name].question_kinds if k in kinds] + sorted(
        set(kinds) - set(VARIANTS[name].question_kinds)
    )
    rows = []
    for kind in order:
        acc, base = kinds[kind]["accuracy"], kinds[kind]["majority_baseline"]
        rows.append({"variant": name, "kind": kind, "questions": counts[kind], "accuracy": acc, "majority": base,
                     "gain": acc - base})  # fmt: skip
    summary = {
        "variant": name,
        "vqa_accuracy": m.get("vqa_accuracy"),
        "majority": m.get("majority_baseline"),
        "bleu4": m.get("bleu4"),
        "cider": m.get("cider"),
        "questions": m.get("num_questions"),
        "fit_s": result["fit_s"],
        "eval_s": result["eval_s"],
    }
    summary["gain"] = None if summary["vqa_accuracy"] is None else summary["vqa_accuracy"] - summary["majority"]
    return rows, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    rows, summaries, data = [], [], {}
    for name in args.variants:
        root, data[name] = ensure_data(name, args)
        log.info("%s: fit, export, evaluate", name)
        result = train_and_score(name, root, args)
        kind_rows, summary = rows_of(name, result, question_counts(root, args.eval_images))
        rows += kind_rows
        summaries.append(summary | {"make_s": data[name]["make_s"], "run": result["run"]})
    mode = "--quick (a smoke run, not a figure)" if args.quick else "configs/demo.yaml"
    payload = report(
        "suite",
        f"Generalisation suite: {mode}, data.root per variant; VQA accuracy per kind vs the majority answer",
        rows,
        [("variant", "variant", "s"), ("kind", "question kind", "s"), ("questions", "questions", "d"),
         ("accuracy", "accuracy %", ".1f"),
         ("majority", "majority %", ".1f"), ("gain", "gain (points)", "+.1f")],
        (torch.device("cpu"), argv, SIZE, args.out),
        data=data,
        variants={n: {"image_size": VARIANTS[n].image_size, "question_kinds": VARIANTS[n].question_kinds,
                      "questions_per_image": VARIANTS[n].questions_per_image,
                      "captions": VARIANTS[n].caption_style is not None} for n in args.variants},
        eval_images=args.eval_images,
        extra_fit_flags=(QUICK_FIT if args.quick else []) + args.extra,
        summary=summaries,
    )  # fmt: skip
    print("\nper variant (BLEU-4 and CIDEr where it has captions)\n")
    print_table(summaries, [("variant", "variant", "s"), ("vqa_accuracy", "VQA acc %", ".1f"),
                            ("majority", "majority %", ".1f"), ("gain", "gain (points)", "+.1f"),
                            ("bleu4", "BLEU-4", ".3f"), ("cider", "CIDEr", ".3f"), ("fit_s", "fit s", ".0f"),
                            ("eval_s", "evaluate s", ".0f")])  # fmt: skip
    return payload


if __name__ == "__main__":
    main()
