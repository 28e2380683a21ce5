"""Serving benchmark: `vision-attn serve` of this checkout against another's (the LitServe server before it), on the
same model, alternating, driven by concurrent loopback clients.

    git worktree add /tmp/old-server <commit>
    python benchmarks/serve_throughput.py --model runs/demo/model --old-root /tmp/old-server

Each run starts one server (a subprocess on a free 127.0.0.1 port, `vision_attn.serving.harness`), sends every
distinct request once alone (its lone answer), measures the idle server's CPU for `--idle-seconds`, then has
`--clients` threads each send `--rounds` POST /v1/vqa requests (JSON, base64 images from `--images`, questions
cycled) back to back over a keep-alive connection. Every answer must equal its lone answer (batching changes
none), and both servers must give the same lone answers. Prints answers/s, p50/p99 client latency and idle CPU
per server (medians of `--repeats` runs, the servers alternating) and their ratio; writes everything, with the
settings, versions and machine, to `--out`. Without `--old-root` only this checkout's server is measured.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vision_attn.data.images import find_images  # noqa: E402
from vision_attn.serving.harness import process_cpu_seconds, running_server  # noqa: E402

QUESTIONS = [
    "what shape is the orange object?",
    "what color is the circle?",
    "how many objects are there?",
    "is there a red square?",
    "what is on the left?",
    "what size is the triangle?",
]


def drive(url: str, bodies: list[bytes], clients: int, rounds: int) -> tuple[float, list[float], list[Any]]:
    """`clients` threads each send `rounds` of `bodies` in turn (client c, round r: body c * rounds + r, cycled)
    over one keep-alive connection; wall seconds, and per request its latency (s) and answer, in that order."""
    n = clients * rounds
    latencies, answers, errors = [0.0] * n, [None] * n, []
    start_together = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = connect(url)
        start_together.wait()
        for i in range(c * rounds, (c + 1) * rounds):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/vqa", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            latencies[i] = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}: {data[:200]!r}")
                return
            answers[i] = _answer(json.loads(data))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return wall, latencies, answers


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)


PROB_REL = 1e-4  # batched and lone probabilities differ by float rounding (the matmuls' reduction order)


def _answer(reply: dict[str, Any]) -> tuple:
    """What must not change with batching: the ranked answers and their probabilities."""
    return tuple((a["answer"], a["probability"]) for a in reply["answers"])


def same(a: tuple, b: tuple) -> bool:
    """The same ranked answers, and probabilities equal within `PROB_REL` (exact equality would compare rounding)."""
    return [x for x, _ in a] == [x for x, _ in b] and all(
        abs(p - q) <= PROB_REL * max(p, q) for (_, p), (_, q) in zip(a, b, strict=True)
    )


def lone_answers(url: str, bodies: list[bytes]) -> list[tuple]:
    """Each body sent alone, one after another."""
    out = []
    for body in bodies:
        conn = connect(url)
        conn.request("POST", "/v1/vqa", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
        out.append(_answer(json.loads(resp.read())))
        conn.close()
    return out


def measure(name: str, root: Path, bodies: list[bytes], args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One run of one server: its lone answers, idle CPU, and the timed load."""
    server_args = ["--max-batch-size", str(args.max_batch_size), "--batch-timeout", str(args.batch_timeout)]
    server_args += ["--threads", str(args.threads), "--device", args.device, "--log-level", "warning"]
    server_args += ["--timeout", "300"]
    with running_server(args.model, server_args, log_dir / f"{name}.log", root=root) as server:
        lone = lone_answers(server.url, bodies)
        time.sleep(1.0)
        cpu = process_cpu_seconds(server.process.pid)
        time.sleep(args.idle_seconds)
        idle = (process_cpu_seconds(server.process.pid) - cpu) / args.idle_seconds
        load = os.getloadavg()[0]
        wall, latencies, answers = drive(server.url, bodies, args.clients, args.rounds)
    mismatches = sum(not same(got, lone[i % len(bodies)]) for i, got in enumerate(answers))
    ms = sorted(x * 1000 for x in latencies)
    row = {
        "answers_per_s": len(answers) / wall,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "idle_cpu_percent_of_a_core": 100 * idle,
        "answers_unlike_lone": mismatches,
        "load_avg_1min_before": load,
    }
    print(f"{name}: {row}", file=sys.stderr)
    return {"row": row, "lone": lone}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "fastapi", "starlette", "pydantic", "uvicorn", "litserve"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    names = [ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")]
    machine = {"cpu": names[0] if names else platform.machine(), "cpu_count": os.cpu_count(), "device": args.device}
    return {"versions": versions, "machine": machine | {"platform": platform.platform()}}


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder from `vision-attn export`")
    p.add_argument("--old-root", default=None, help="a checkout of the server to compare with (a git worktree)")
    default_images = [str(ROOT / "assets" / f"scene_{i}.jpg") for i in (1, 2, 3)]
    p.add_argument("--images", nargs="+", default=default_images, help="image files or folders")
    p.add_argument("--clients", type=int, default=64, help="concurrent client threads")
    p.add_argument("--rounds", type=int, default=10, help="requests each client sends, one after another")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-timeout", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=0, help="the servers' --threads (0: each server's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--idle-seconds", type=float, default=5.0, help="how long to measure an idle server's CPU")
    p.add_argument("--repeats", type=int, default=3, help="runs per server, alternating; medians reported")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_old_vs_new_cpu.json"))
    args = p.parse_args(argv)

    images = find_images(args.images)
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in images]
    pairs = [(i % len(images), QUESTIONS[i % len(QUESTIONS)]) for i in range(len(images) * len(QUESTIONS))]
    bodies = [json.dumps({"image": encoded[im], "question": q}).encode() for im, q in pairs]
    servers = {"new": ROOT} | ({"old": Path(args.old_root).resolve()} if args.old_root else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    lone: dict[str, list[tuple]] = {}
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(args.repeats):
            for name, root in reversed(servers.items()):  # old first, then new, in every repeat
                result = measure(name, root, bodies, args, Path(logs))
                runs[name].append(result["row"])
                lone[name] = result["lone"]
    keys = ("answers_per_s", "p50_ms", "p99_ms", "idle_cpu_percent_of_a_core")
    summary = {name: {k: statistics.median(r[k] for r in rows) for k in keys} for name, rows in runs.items()}
    every_answer_alone = all(r["answers_unlike_lone"] == 0 for rows in runs.values() for r in rows)
    same_old_new = "old" not in lone or all(same(a, b) for a, b in zip(lone["old"], lone["new"], strict=True))
    ratio = summary["new"]["answers_per_s"] / summary["old"]["answers_per_s"] if "old" in summary else None

    n = args.clients * args.rounds
    print(f"{n} POST /v1/vqa per run ({args.clients} clients x {args.rounds}), {len(images)} images, loopback")
    print(f"{'server':8s} {'answers/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'idle CPU %':>11s}")
    for name, s in summary.items():
        print(f"{name:8s} {s['answers_per_s']:10.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s[keys[3]]:11.2f}")
    if ratio is not None:
        print(f"throughput new/old: {ratio:.2f}x; same lone answers old and new: {same_old_new}")
    print(f"every batched answer equals its lone answer: {every_answer_alone}")

    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/serve_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "note": "loopback; the client threads and the server share the same CPU cores",
        "git_commit": {name: git_commit(root) for name, root in servers.items()},
        **environment(args),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "images", "old_root", "model")}
        | {"images": [path.name for path in images], "requests_per_run": n},
        "runs": runs,
        "median": summary,
        "throughput_ratio_new_old": ratio,
        "every_answer_equals_its_lone_answer": every_answer_alone,
        "same_lone_answers_old_and_new": same_old_new,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    if not (every_answer_alone and same_old_new):
        print("error: some answers differ from their lone answers, or between the servers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
