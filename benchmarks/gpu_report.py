"""The GPU suite's own records (`benchmarks/gpu_suite.sh` calls these):

    python -m benchmarks.gpu_report preflight --device cuda --out WORK/preflight.json
    python -m benchmarks.gpu_report summary --tag gpu --results benchmarks/results --work WORK

`preflight` imports every module the suite's stages run and notes the versions and the GPU, so that a missing
wheel shows in seconds, not as a failed stage minutes later. `summary` reads what the stages wrote (the
benchmarks' json files, pytest's junit xml, the training run's metrics.csv) and prints one table of the figures
against their targets, after the stages' outcomes; it writes all of it to `suite_<tag>.json`.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

MODULES = (  # what the stages import, besides the standard library
    "vision_attn.cli",
    "vision_attn.data.synthetic",
    "vision_attn.lightning_cli",  # LightningCLI: jsonargparse[signatures]
    "vision_attn.training",  # validation metrics: pycocoevalcap
    "vision_attn.export",
    "vision_attn.pointing",
    "benchmarks.train_throughput",
    "benchmarks.generate_latency",
    "benchmarks.pointing_game",
    "pytest",
    "docstring_parser",
    "typeshed_client",
)
DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "lightning",
    "tokenizers",
    "safetensors",
    "jsonargparse",
    "docstring-parser",
    "typeshed-client",
    "pycocoevalcap",
    "pytest",
    "numpy",
    "pillow",
)
TARGETS = {  # the targets, as ratios of ours to the reference
    "train": 2.0,  # images/s, x the peer
    "mfu": 0.35,  # of the datasheet's dense bf16 rate (989 TFLOP/s on an H100 SXM or H200)
    "trainer": 0.80,  # Lightning Trainer + DataModule, x the bare model
    "latency_b1": 5.0,  # batch-1 greedy: the peer's latency over ours (ours <= 1/5 of the peer's)
    "captions_b64": 2.0,  # batch 64: captions/s, x the peer
}


def preflight(device: str) -> dict[str, Any]:
    """Import every module the stages run; note versions and, on a GPU, what the device is."""
    imports = {}
    for name in MODULES:
        try:
            importlib.import_module(name)
            imports[name] = "ok"
        except Exception as e:  # an import can fail in many ways; each is a finding to report, not to raise
            imports[name] = f"{type(e).__name__}: {e}"
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "imports": imports, "versions": versions}
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(),
            "cuda": torch.version.cuda,
        }
    info["ok"] = all(v == "ok" for v in imports.values()) and (device != "cuda" or info["cuda_available"])
    return info


# ---- reading what the stages wrote ----


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_stages(path: Path) -> list[dict[str, Any]]:
    """The suite's stage log: name, exit code (or "skipped"), seconds, box, one tab-separated line each."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, box = line.split("\t")
        status = {"0": "ok", "124": "out of time", "137": "out of time", "skipped": "skipped"}.get(rc, f"failed ({rc})")
        rows.append({"stage": name, "status": status, "seconds": int(seconds), "box_s": int(box)})
    return rows


def pytest_record(junit: Path) -> dict[str, Any] | None:
    """Outcome, seconds and message of every test in pytest's junit xml, and the counts."""
    if not junit.exists():
        return None
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:400]
        cases.append(
            {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0), "why": message}
        )
    return {"counts": dict(Counter(c["outcome"] for c in cases)), "tests": cases}


def fit_record(run_dir: Path, batch_size: int | None) -> dict[str, Any] | None:
    """Steps, epochs, the training loss curve and the last validation metrics of the run's metrics.csv."""
    files = sorted(run_dir.rglob("metrics.csv"))  # the configs log into default_root_dir itself
    if not files:
        return None
    with files[-1].open() as f:
        rows = list(csv.DictReader(f))

    def series(key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]

    loss = series("train/loss")
    val = {k: series(k)[-1][1] for k in ("val/loss", "val/vqa_accuracy", "val/bleu4", "val/cider") if series(k)}
    step = max((int(r["step"]) for r in rows if r.get("step")), default=0)  # within log_every_n_steps of the last
    return {
        "last_logged_step": step,
        "exported_step": checkpoint_step(run_dir / "checkpoints" / "last.ckpt"),
        "images_by_then": (step + 1) * batch_size if batch_size else None,
        "epochs_started": max((int(r["epoch"]) for r in rows if r.get("epoch")), default=-1) + 1,
        "train_loss": loss,  # (step, loss) every log_every_n_steps
        "val_last": val,
        "validations": len(series("val/loss")),
    }


def checkpoint_step(path: Path) -> int | None:
    """The training step of a Lightning checkpoint, read without loading its tensors (memory-mapped)."""
    if not path.exists():
        return None
    import torch

    # our own run's checkpoint: its pickled hyper-parameters need weights_only=False
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])


# ---- the figures against the targets ----


def rows_by(payload: dict[str, Any] | None, *keys: str) -> dict[tuple, dict[str, Any]]:
    """A benchmark's result rows by the values of `keys` (nothing if the file is missing or unreadable)."""
    if not payload:
        return {}
    return {tuple(r[k] for k in keys): r for r in payload["results"]}


def figure(
    name: str, ours: float | None, ref: float | None, target: float | None, unit: str, lower_is_better: bool = False
) -> dict[str, Any]:
    """One row of the table. Its ratio is oriented so that larger is better: ours / ref, or ref / ours for times."""
    r = None
    if ours is not None and ref:
        r = ref / ours if lower_is_better else ours / ref
    met = None if r is None or target is None else r >= target
    return {"figure": name, "ours": ours, "reference": ref, "ratio": r, "target": target, "met": met, "unit": unit}


def training_figures(results: Path, tag: str) -> list[dict[str, Any]]:
    """ours vs the peer, ours' MFU (of the datasheet's peak; of the measured one where no datasheet is known), and
    the Trainer + DataModule run against the bare model."""
    train = rows_by(read_json(results / f"train_{tag}.json"), "variant")
    trainer = rows_by(read_json(results / f"train_trainer_{tag}.json"), "variant")
    ours, peer, lit = (d.get((v,), {}) for d, v in ((train, "ours"), (train, "peer"), (trainer, "trainer")))
    mfu = ours.get("mfu_datasheet") if ours.get("mfu_datasheet") is not None else ours.get("mfu_measured_peak")
    return [
        figure("training: ours vs peer", ours.get("images_per_s"), peer.get("images_per_s"), TARGETS["train"], "img/s"),
        figure("training: ours MFU", mfu, 1.0, TARGETS["mfu"], "of peak"),
        figure(
            "training: Trainer + DataModule vs bare ours",
            lit.get("images_per_s"),
            ours.get("images_per_s"),
            TARGETS["trainer"],
            "img/s",
        ),
    ]


def caption_figures(results: Path, tag: str) -> list[dict[str, Any]]:
    """Per case, ours and ours_compiled against the peer: latency at batch 1, captions/s at the largest batch."""
    gen = rows_by(read_json(results / f"generate_{tag}.json"), "variant", "batch", "beams")
    compiled = rows_by(read_json(results / f"generate_compiled_{tag}.json"), "variant", "batch", "beams")
    gen |= {k: v for k, v in compiled.items() if k[0] == "ours_compiled"}
    largest = max((k[1] for k in gen), default=None)
    out = []
    for variant, batch, beams in sorted((k for k in gen if k[0] != "peer"), key=lambda k: (k[1], k[2], k[0])):
        r, peer = gen[(variant, batch, beams)], gen.get(("peer", batch, beams), {})
        what = f"captions: {variant}, batch {batch}, " + ("greedy" if beams == 1 else f"beam {beams}")
        if batch == 1:
            target = TARGETS["latency_b1"] if beams == 1 else None
            out.append(figure(what, r["latency_ms"], peer.get("latency_ms"), target, "ms", lower_is_better=True))
        else:
            target = TARGETS["captions_b64"] if batch == largest else None
            out.append(figure(what, r["captions_per_s"], peer.get("captions_per_s"), target, "captions/s"))
    return out


def pointing_figure(results: Path, tag: str) -> dict[str, Any]:
    """The layer-mean map's hit rate over all words against chance (a random point: box area / image area)."""
    point = read_json(results / f"pointing_game_{tag}.json")
    every = (point or {}).get("summary", {}).get("all")
    if not every:
        return figure("pointing game: " + ("no word named one object" if point else "no results"), None, None, None, "")
    hit, chance = every["hit_rate"]["layer mean"], every["chance_box_area"]
    return figure(f"pointing game: hit rate of {every['n']} words", hit, chance, None, "hits")


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:.1%}" if unit in ("of peak", "hits") else f"{x:,.1f}"


def print_summary(payload: dict[str, Any]) -> None:
    stages, figs, tests, env, fit = (payload[k] for k in ("stages", "figures", "tests", "environment", "fit"))
    gpu, torch_version = env.get("gpu", {}).get("name", "no GPU"), env.get("versions", {}).get("torch", "?")
    print(f"\n## GPU suite: {gpu}, torch {torch_version}\n")
    print("| stage | status | seconds | box s |\n|---|---|---|---|")
    for s in stages:
        print(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['box_s']} |")
    if tests:
        print(f"\ngpu tests: {', '.join(f'{n} {k}' for k, n in sorted(tests['counts'].items()))}")
        for t in tests["tests"]:
            if t["outcome"] in ("failed", "error"):
                print(f"  {t['outcome']}: {t['test']}: {t['why']}")
    if fit and fit["train_loss"]:
        (s0, l0), (s1, l1) = fit["train_loss"][0], fit["train_loss"][-1]
        val = ", ".join(f"{k} {v:.3g}" for k, v in fit["val_last"].items())
        print(f"fit: train/loss {l0:.3f} at step {s0} -> {l1:.3f} at step {s1}, {fit['epochs_started']} epochs; {val}")
        print(f"     the exported model (last.ckpt) is that of step {fit['exported_step']}")
    print("\n| figure | ours | reference | ratio | target | met |\n|---|---|---|---|---|---|")
    for f in figs:
        met = {None: "-", True: "yes", False: "NO"}[f["met"]]
        target = "-" if f["target"] is None else f">= {f['target']:.2f}"
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
        ours, ref = fmt(f["ours"], f["unit"]), fmt(f["reference"], f["unit"])
        print(f"| {f['figure']} | {ours} | {ref} | {ratio} | {target} | {met} |")
    print(
        "\nratio: ours / peer (latency: peer / ours); MFU: of the datasheet's bf16 rate (measured peak on CPU); "
        "pointing game: hit rate / chance (box area)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("preflight", help="import what the stages run; versions, GPU")
    s.add_argument("--device", choices=["cuda", "cpu"], required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summary", help="the table of figures against the targets; suite_<tag>.json")
    s.add_argument("--tag", required=True, help="gpu or cpu: the suffix of the results files")
    s.add_argument("--results", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True, help="the suite's work folder (stages.tsv, junit, runs/)")
    s.add_argument("--fit-batch", type=int, help="images per training step of the fit stage")
    s.add_argument("--settings", default="{}", help="the suite's settings, a json object, recorded as they are")
    args = p.parse_args(argv)
    if args.command == "preflight":
        info = preflight(args.device)
        args.out.write_text(json.dumps(info, indent=2) + "\n")
        for name, status in info["imports"].items():
            print(f"import {name}: {status}")
        print(json.dumps({k: info[k] for k in ("python", "versions", "cuda_available") if k in info}))
        print(json.dumps(info.get("gpu", {})))
        return 0 if info["ok"] else 1
    payload = {
        "suite": "benchmarks/gpu_suite.sh",
        "settings": json.loads(args.settings),
        "stages": read_stages(args.work / "stages.tsv"),
        "environment": read_json(args.work / "preflight.json") or {},
        "tests": pytest_record(args.work / "pytest.xml"),
        "fit": fit_record(args.work / "runs" / "vit_b16", args.fit_batch),
        "figures": [
            *training_figures(args.results, args.tag),
            *caption_figures(args.results, args.tag),
            pointing_figure(args.results, args.tag),
        ],
    }
    out = args.results / f"suite_{args.tag}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print_summary(payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
