"""The record of a benchmark run: its environment (device, versions, command, commit), the table, the results file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers import Size

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def environment(device: torch.device, script: str, argv: list[str] | None) -> dict[str, Any]:
    """Device, versions, command and date: what a figure needs to be reproduced."""
    import lightning
    import timm
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        commit += "+dirty" if dirty.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": name,
        "cpu_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],  # other work on a shared machine slows every variant
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "commit": commit,
        "command": " ".join(["python -m", f"benchmarks.{script}", *(sys.argv[1:] if argv is None else argv)]),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def size_record(size: Size) -> dict[str, Any]:
    return asdict(size)


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def report(
    benchmark: str,
    title: str,
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str, str]],
    run: tuple[torch.device, list[str] | None, Size, Path],
    **fields: Any,
) -> dict[str, Any]:
    """Print `title` and the table of `rows`; write the results file and return its payload: the benchmark's name,
    its environment, the size, `fields` and the rows. `run` is (device, argv, size, results path)."""
    device, argv, size, out = run
    print(f"\n## {title}\n")
    print_table(rows, columns)
    payload = {
        "benchmark": benchmark,
        "environment": environment(device, benchmark, argv),
        "size": size_record(size),
        **fields,
        "results": rows,
    }
    write_results(out, payload)
    return payload


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """A markdown table of rows; columns are (key, header, format spec); missing values print as '-'."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)

    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row, k, f) for k, _, f in columns) + " |")


def run_python(cmd: list[str], threads: int, logfile: Path) -> float:
    """`python <cmd>` in the repository at `threads` torch threads, its output to `logfile`; seconds it took.

    A failure stops the benchmark with the command and the end of its log.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logfile.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with logfile.open("w") as f:
        rc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "\n".join(logfile.read_text().splitlines()[-30:])
        raise SystemExit(f"`python {' '.join(cmd)}` failed ({rc}); the end of {logfile}:\n{tail}")
    return time.monotonic() - start
