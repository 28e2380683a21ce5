"""`benchmarks/gpu_suite.sh --device cpu --quick`: every stage of the GPU suite runs on the CPU at tiny sizes and
writes its results, so that the script cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ["wheels", "preflight", "data", "tests", "train", "trainer", "generate", "compiled", "fit", "export"]
STAGES += ["pointing"]


@pytest.mark.slow
def test_cpu_dry_run_runs_every_stage_and_writes_its_results(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--quick", "--results", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    suite = json.loads((results / "suite_cpu.json").read_text())
    stages = {s["stage"]: s["status"] for s in suite["stages"]}
    assert list(stages) == STAGES
    assert all(status in ("ok", "skipped") for status in stages.values()), stages
    assert stages["wheels"] == ("ok" if list((REPO / ".whl").glob("*.whl")) else "skipped")
    # each benchmark ran its variants and cases
    variants = {
        name: {r["variant"] for r in json.loads((results / f"{name}_cpu.json").read_text())["results"]}
        for name in ("train", "train_trainer", "generate", "generate_compiled")
    }
    assert variants == {
        "train": {"peer", "ours_eager", "ours"},
        "train_trainer": {"trainer"},
        "generate": {"peer", "ours"},
        "generate_compiled": {"ours", "ours_compiled"},
    }
    assert json.loads((results / "pointing_game_cpu.json").read_text())["images"] == 8
    # the GPU tests were collected and skipped, saying why
    tests = suite["tests"]["tests"]
    assert len(tests) >= 5 and all(t["outcome"] == "skipped" and "CUDA" in t["why"] for t in tests)
    assert suite["environment"]["ok"] and suite["environment"]["imports"]["vision_attn.lightning_cli"] == "ok"
    # the short training run of configs/vit_b16.yaml logged its loss and validated
    assert suite["fit"]["train_loss"] and suite["fit"]["validations"] == 1
    figures = {f["figure"]: f for f in suite["figures"]}
    assert figures["training: ours vs peer"]["ratio"] > 0
    assert figures["captions: ours_compiled, batch 1, greedy"]["ratio"] > 0
    assert "| figure | ours | reference | ratio | target | met |" in run.stdout
    # what would come back from a GPU machine: the results and the log, and nothing in benchmarks/results
    assert {p.name for p in out.iterdir()} == {p.name for p in results.iterdir()} | {"gpu_suite.log"}
    assert "=== summary: done" in (out / "gpu_suite.log").read_text()
    work = re.search(r"work folder (\S+),", run.stdout)
    assert work and not Path(work[1]).exists()  # its work folder (data, checkpoints, the model) is gone
