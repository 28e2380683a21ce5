"""Serving benchmark: `vision-attn serve` with dynamic batching on and off, driven by concurrent loopback clients.

    python benchmarks/serve_throughput.py --model runs/demo/model

Starts the server (a subprocess on a free 127.0.0.1 port) once per setting and run, waits for /health, sends
a few warm-up requests, then has `--clients` threads send `--requests` POST /v1/vqa requests (JSON, base64
images from `--images`, questions cycled) over keep-alive connections. Prints answers/s and p50/p99 client
latency for each setting and their ratio; writes the results, settings, versions and machine to `--out`.
Every request must succeed, and both settings must give the same answers (batching changes no output).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vision_attn.data.images import find_images  # noqa: E402

QUESTIONS = [
    "what shape is the orange object?",
    "what color is the circle?",
    "how many objects are there?",
    "is there a red square?",
    "what is on the left?",
    "what size is the triangle?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model: str, max_batch_size: int, args: argparse.Namespace):
    """`vision-attn serve` in its own session; yields the port; stops it (and its workers) on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "vision_attn.cli", "serve", "--model", model, "--port", str(port)]
    cmd += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(args.batch_timeout)]
    cmd += ["--threads", str(args.threads), "--device", args.device, "--log-level", "warning", "--timeout", "300"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start ({' '.join(cmd)})")
            time.sleep(0.5)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def drive(port: int, bodies: list[bytes], clients: int) -> tuple[float, list[float], list[str]]:
    """Send every body once from `clients` threads; return wall seconds, latencies (s) and answers, in order."""
    latencies, answers = [0.0] * len(bodies), [""] * len(bodies)
    next_index, lock, errors = [0], threading.Lock(), []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies):
                return
            t0 = time.perf_counter()
            conn.request("POST", "/v1/vqa", body=bodies[i], headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            latencies[i] = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}: {data[:200]!r}")
                return
            answers[i] = json.loads(data)["answer"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return wall, latencies, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("vision-attn", "torch", "litserve", "fastapi", "uvicorn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"device": device, "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (results files hold no home folders)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def serve_threads() -> int:
    """What `vision-attn serve --threads 0` picks with one worker: the cores shared by its two model processes."""
    return max(1, len(os.sched_getaffinity(0)) // 2) if hasattr(os, "sched_getaffinity") else 1


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder from `vision-attn export`")
    p.add_argument("--images", nargs="+", default=[str(ROOT / "assets")], help="image files or folders")
    p.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    p.add_argument("--requests", type=int, default=400, help="timed requests per run")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests before each run")
    p.add_argument("--max-batch-size", type=int, default=16, help="the 'batching on' setting (off is 1)")
    p.add_argument("--batch-timeout", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=0, help="torch threads per model process (0: serve's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=3, help="runs per setting, alternating on/off; medians reported")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_cpu.json"))
    args = p.parse_args(argv)

    images = find_images(args.images)
    if not images:
        p.error(f"no images under {args.images}")
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in images]
    pairs = [(i % len(images), QUESTIONS[i % len(QUESTIONS)]) for i in range(len(images) * len(QUESTIONS))]
    bodies = [
        json.dumps({"image": encoded[im], "question": q}).encode()
        for im, q in (pairs[i % len(pairs)] for i in range(args.requests))
    ]
    settings = {"on": args.max_batch_size, "off": 1}
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    answers: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, batch in settings.items():
            with running_server(args.model, batch, args) as port:
                drive(port, bodies[: args.warmup], min(args.clients, args.warmup))
                load = os.getloadavg()[0]
                wall, lat, answers[name] = drive(port, bodies, args.clients)
            ms = [x * 1000 for x in lat]
            runs[name].append(
                {
                    "answers_per_s": len(bodies) / wall,
                    "p50_ms": percentile(ms, 50),
                    "p99_ms": percentile(ms, 99),
                    "load_avg_1min_before": load,
                }
            )
            print(f"batching {name:3s} (max_batch_size {batch:2d}): {runs[name][-1]}", file=sys.stderr)
    summary = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("answers_per_s", "p50_ms", "p99_ms")}
        for name, rs in runs.items()
    }
    ratio = summary["on"]["answers_per_s"] / summary["off"]["answers_per_s"]
    same = answers["on"] == answers["off"]

    print(f"{len(bodies)} POST /v1/vqa requests, {args.clients} concurrent clients, {len(images)} images, loopback")
    print(f"{'setting':24s} {'answers/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, batch in settings.items():
        s = summary[name]
        label = f"batching {name} (max {batch})"
        print(f"{label:24s} {s['answers_per_s']:10.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f}")
    print(f"throughput ratio on/off: {ratio:.2f}x; same answers on and off: {same}")

    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/serve_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "note": "loopback; client threads, API process and model processes share the same CPU cores",
        "git_commit": git_commit().strip(),
        "machine": machine(args.device),
        "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "images")}
        | {"images": [shown(path) for path in images], "threads_per_model_process": args.threads or serve_threads()},
        "runs": runs,
        "median": summary,
        "throughput_ratio_on_off": ratio,
        "same_answers_on_and_off": same,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    if not same:
        print("error: batching changed some answers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
