"""What both benchmarks share: the model sizes, the Hugging Face peer, the FLOP formula, timing and the record.

The peer is `transformers.VisionEncoderDecoderModel` built from config (random init, nothing downloaded): a HF
ViT encoder and a GPT-2 decoder with cross-attention in every layer, SDPA attention in both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# Dense bf16 datasheet peaks, TFLOP/s, by a substring of the device name (first match wins).
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}
PROMPT = [1, 3]  # <bos> <caption>: the caption prompt of vision-attn's tokenizer (ids 1 and 3)


@dataclass(frozen=True)
class Size:
    """One workload size, shared by ours and the peer."""

    name: str
    image_size: int
    patch_size: int
    enc_dim: int
    enc_depth: int
    enc_heads: int
    stem: str  # ours only: "conv" (demo) or "patch"; the HF ViT always has a patch projection
    class_token: bool
    dec_dim: int
    dec_depth: int
    dec_heads: int
    vocab_size: int
    max_len: int = 64

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES = {
    # configs/demo.yaml (vocabulary of the demo tokenizer, runs/demo/model)
    "demo": Size("demo", 64, 8, 128, 4, 4, "conv", False, 128, 3, 4, 423),
    # the workload: ViT-B/16 at 224 + 12-layer 768-wide decoder, vocabulary 32,000
    "vit_b16": Size("vit_b16", 224, 16, 768, 12, 12, "patch", True, 768, 12, 12, 32000),
}


def ours_config(size: Size) -> ModelConfig:
    """Our model at `size`, no dropout or drop-path (the peer is built without them too)."""
    return ModelConfig(
        EncoderConfig(
            image_size=size.image_size,
            patch_size=size.patch_size,
            dim=size.enc_dim,
            depth=size.enc_depth,
            num_heads=size.enc_heads,
            stem=size.stem,  # type: ignore[arg-type]
            class_token=size.class_token,
        ),
        DecoderConfig(
            vocab_size=size.vocab_size,
            dim=size.dec_dim,
            depth=size.dec_depth,
            num_heads=size.dec_heads,
            max_len=size.max_len,
        ),
    )


def build_peer(size: Size) -> torch.nn.Module:
    """HF VisionEncoderDecoderModel (ViT + GPT-2 with cross-attention) at `size`, random init, SDPA, no dropout."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    enc = ViTConfig(
        image_size=size.image_size,
        patch_size=size.patch_size,
        hidden_size=size.enc_dim,
        num_hidden_layers=size.enc_depth,
        num_attention_heads=size.enc_heads,
        intermediate_size=4 * size.enc_dim,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    dec = GPT2Config(
        vocab_size=size.vocab_size,
        n_positions=size.max_len,
        n_embd=size.dec_dim,
        n_layer=size.dec_depth,
        n_head=size.dec_heads,
        add_cross_attention=True,
        is_decoder=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    model = VisionEncoderDecoderModel(config=cfg)
    impl = (model.config.encoder._attn_implementation, model.config.decoder._attn_implementation)
    if impl != ("sdpa", "sdpa"):
        raise RuntimeError(f"the peer should use SDPA attention, got {impl}; check the transformers version")
    return model


def forward_flops(size: Size, text_len: int, memory_tokens: int) -> dict[str, float]:
    """Matmul FLOPs of one image's forward pass (2 per multiply-add); training counts 3x this.

    With N encoder tokens (patches + class token) of width D, T text tokens and M image tokens the decoder
    attends to (ours: the patches; the peer: every encoder token), decoder width C, vocabulary V:
        encoder, per layer:  24*N*D^2 (qkv, proj, 4x MLP) + 4*N^2*D (scores and weighted sum)
        patch projection:    2*P*(3*p^2)*D (P patches of p x p pixels; our demo's conv stem is counted as this)
        decoder, per layer:  self-attention 8*T*C^2 + 4*T^2*C; cross-attention 4*T*C^2 (q, proj)
                             + 4*M*C^2 (k, v of the image tokens) + 4*T*M*C; MLP 16*T*C^2
        LM head:             2*T*C*V
    Causal masking is not discounted (the usual convention); norms, softmax and elementwise work are left out.
    """
    P = size.num_patches
    N, D = P + int(size.class_token), size.enc_dim
    T, M, C, V = text_len, memory_tokens, size.dec_dim, size.vocab_size
    enc = size.enc_depth * (24 * N * D**2 + 4 * N**2 * D) + 2 * P * 3 * size.patch_size**2 * D
    dec_layer = 8 * T * C**2 + 4 * T**2 * C + 4 * T * C**2 + 4 * M * C**2 + 4 * T * M * C + 16 * T * C**2
    dec = size.dec_depth * dec_layer
    head = 2 * T * C * V
    return {"encoder": float(enc), "decoder": float(dec), "lm_head": float(head), "total": float(enc + dec + head)}


# ---- devices and timing ----


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


# ---- the record ----


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


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """A markdown table of rows; columns are (key, header, format spec); missing values print as '-'."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)

    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row, k, f) for k, _, f in columns) + " |")
