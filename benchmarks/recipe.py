"""Recipe experiments: `configs/demo.yaml` with a few flags changed, trained for a fixed number of optimizer steps,
scored per question kind on the validation split as it trains.

    python -m benchmarks.recipe --name base                                   # the config as it is
    python -m benchmarks.recipe --name img128 -- --model.encoder.image_size 128 --model.encoder.patch_size 16
    python -m benchmarks.recipe --table                                       # every recorded run, one table

Each run: `train.py fit --config configs/demo.yaml --trainer.max_steps STEPS --trainer.max_time null` (the cosine
schedule over those steps, so runs of one length compare at equal steps, whatever the machine's speed), validation
on --val-images images every --val-every steps (greedy answers and captions: `val/vqa_acc_<kind>`, `val/bleu4`),
plus the flags after `--`. Results (the flags, seconds, and the curve of every validation) go to
`benchmarks/results/recipe_cpu.json`, one entry per --name (a rerun replaces it); benchmarks/README.md, "Learning
a new dataset", says what was found.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.record import REPO, run_python

log = logging.getLogger("benchmarks.recipe")
RESULTS = REPO / "benchmarks" / "results" / "recipe_cpu.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="this run's name in the results file")
    p.add_argument("--data-root", type=Path, default=REPO / "data" / "synthetic", help="a COCO/VQAv2-layout folder")
    p.add_argument("--steps", type=int, default=624, help="optimizer steps (the demo's epoch is 312 at batch 64)")
    p.add_argument("--val-every", type=int, default=208, help="validate every this many steps")
    p.add_argument("--val-images", type=int, default=200, help="validation images")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "recipe", help="run folders")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", type=Path, default=RESULTS, help="results json (entries by --name)")
    p.add_argument("--table", action="store_true", help="print the table of --out and stop")
    p.add_argument("extra", nargs="*", help="more `train.py fit` flags, after --")
    args = p.parse_args(argv)
    if not args.table and not args.name:
        p.error("--name is required to run")
    return args


def fit_command(args: argparse.Namespace, run: Path) -> list[str]:
    """`train.py fit` for a fixed number of steps with validation every --val-every steps."""
    return [
        "train.py", "fit", "--config", str(args.config),
        "--data.root", str(args.data_root),
        "--trainer.default_root_dir", str(run),
        "--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
        "--trainer.val_check_interval", str(args.val_every), "--trainer.check_val_every_n_epoch", "null",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--data.val_max_images", str(args.val_images),
        *args.extra,
    ]  # fmt: skip


def read_curve(metrics_csv: Path) -> list[dict[str, Any]]:
    """Every validation row of a CSVLogger metrics file: step, then the val/ metrics (floats)."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/vqa_accuracy")]
    return [
        {"step": int(r["step"]) + 1, **{k[4:]: round(float(v), 4) for k, v in r.items() if k.startswith("val/") and v}}
        for r in rows
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = (args.work / args.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = fit_command(args, run_dir)
    log.info("%s: python %s", args.name, " ".join(cmd))
    seconds = run_python(cmd, args.threads, run_dir / "fit.log")
    return {
        "data_root": str(args.data_root),
        "flags": args.extra,
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "curve": read_curve(sorted(run_dir.rglob("metrics.csv"))[-1]),
    }


def table(results: dict[str, Any]) -> str:
    """One row per run and validation step: overall accuracy, BLEU-4 and each kind's accuracy."""
    kinds = sorted({k[8:] for r in results.values() for c in r["curve"] for k in c if k.startswith("vqa_acc_")})
    head = ["run", "step", "s", "VQA", "BLEU-4", *kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        for c in r["curve"]:
            cells = [name, str(c["step"]), f"{r['seconds']:.0f}", f"{c['vqa_accuracy']:.1f}"]
            cells.append(f"{c.get('bleu4', 0):.3f}")
            cells += [f"{c.get(f'vqa_acc_{k}', float('nan')):.1f}" for k in kinds]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.table:
        results[args.name] = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
