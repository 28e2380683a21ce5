"""Devices and timing: the command-line options both benchmarks share, clocks, interleaved timing, peak FLOP/s."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.peers import SIZES

# Dense bf16 datasheet peaks, TFLOP/s, by a substring of the device name (first match wins).
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if visible), cuda, cpu")
    p.add_argument("--size", choices=sorted(SIZES), help="default: vit_b16 on a GPU, demo on CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads, the same for every variant (default: torch's)")


def setup(args: argparse.Namespace) -> None:
    """Resolve --device and --size, set the thread count."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = pick_device(args.device)
    args.size = SIZES[args.size or ("vit_b16" if args.device.type == "cuda" else "demo")]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is visible; use --device cpu")
    return torch.device(name)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on a GPU; float32 on CPU (bf16 on most CPUs is slower than float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks between consecutive calls, with no host sync in between: CUDA events on a GPU, perf_counter on CPU.

    The interval between two marks includes everything between them (a data-loader wait, a host-bound gap),
    so it measures the step period, not only the GPU's busy time.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]
        return [(b - a) * 1e3 for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]


def time_calls(fn: Callable[[], object], n: int, warmup: int, device: torch.device) -> list[float]:
    """Run fn `warmup` times untimed, then n times back to back; return the n durations in ms."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    clock = Clock(device)
    clock.mark()
    for _ in range(n):
        fn()
        clock.mark()
    return clock.intervals_ms()


def time_interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Alternate the variants (order rotated each round) so that a noisy, shared machine slows them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            out[name].append((time.perf_counter() - start) * 1e3)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def matmul_tflops(device: torch.device, reps: int = 20) -> tuple[float, str]:
    """Measured dense matmul rate: bf16 8192^3 on a GPU, float32 1024^3 on CPU. Returns (TFLOP/s, what)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = median(time_calls(lambda: a @ b, reps, 3, device))
    return 2 * n**3 / (ms * 1e-3) / 1e12, f"{str(dtype).removeprefix('torch.')} {n}x{n}x{n} matmul"


def datasheet_tflops(device: torch.device) -> float | None:
    """Dense bf16 datasheet peak of the GPUs we know (H100 SXM and H200: 989 TFLOP/s); None elsewhere."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in DATASHEET_BF16_TFLOPS.items() if key in name), None)
