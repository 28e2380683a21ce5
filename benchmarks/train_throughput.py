"""Training throughput: ours vs the Hugging Face VisionEncoderDecoder peer, and ours through Lightning + JPEGs.

    python -m benchmarks.train_throughput                      # GPU: ViT-B/16 + 12x768 decoder, batch 128
    python -m benchmarks.train_throughput --device cpu         # CPU: the demo size, batch 16 (a few minutes)

Variants, all at the same size, batch, text length (32) and optimizer (AdamW, fused on a GPU), no dropout:
    peer        HF ViT + GPT-2 (add_cross_attention), SDPA, bf16 autocast; labels in, loss out.
    ours_eager  our model, bf16 autocast, no torch.compile.
    ours        our model as `VisionAttnModule` trains it: `forward_groups` under torch.compile (default on a
                GPU, off on CPU, as `model.compile: null` does), loss outside the compiled region.
    ours_compile_loss  the same with the loss inside the compiled region (fp32 log-softmax fused): a candidate.
    trainer     `ours` end to end: Lightning Trainer + `VisionAttnDataModule` decoding JPEGs (captions only,
                texts cut at the same 32 tokens, tokenizer padded with unused tokens to the same vocabulary).
Synthetic tensors are random (normal images, uniform token ids), never zeros. A step is forward, backward,
optimizer step, zero_grad; its time is the median interval between consecutive step ends after warm-up (CUDA
events, no host sync inside the loop). On CPU ours and the peer alternate step by step (a shared machine slows
both alike); on a GPU each variant runs alone so that its peak memory is its own.
MFU = 3 x forward FLOPs (formula in `benchmarks/peers.forward_flops`) x images/s over the peak: the bf16 matmul
rate measured in the same run, and the H100 datasheet's 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.peers import Size, build_peer, forward_flops, ours_config
from benchmarks.record import RESULTS, report
from benchmarks.timing import (
    Clock,
    add_common_args,
    autocast,
    datasheet_tflops,
    matmul_tflops,
    median,
    setup,
    time_calls,
    time_interleaved,
)
from vision_attn.models import VisionAttnModel, text_loss

log = logging.getLogger("benchmarks.train_throughput")
VARIANTS = ("peer", "ours_eager", "ours", "ours_compile_loss", "trainer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, help="images per step (default: 128 on a GPU, 16 on CPU, 4 for vit_b16 on CPU)")
    p.add_argument("--text-len", type=int, default=32, help="tokens per caption")
    p.add_argument("--steps", type=int, help="timed steps per variant (default: 30 on a GPU, 8 on CPU)")
    p.add_argument("--trainer-steps", type=int, help="timed steps of `trainer` (default: 100 GPU, 12 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default: 10 GPU, 3 CPU)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="`ours`: auto = on for a GPU")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--data-root", default="data/synthetic", help="COCO-layout folder of JPEGs for `trainer`")
    p.add_argument("--workers", type=int, help="DataLoader workers for `trainer` (default: min(8, cores - 1))")
    p.add_argument("--out", type=Path, help="results json (default: benchmarks/results/train_<cpu|cuda>.json)")
    args = p.parse_args(argv)
    setup(args)
    gpu = args.device.type == "cuda"
    args.batch = args.batch or (128 if gpu else 4 if args.size.name == "vit_b16" else 16)
    args.steps = args.steps or (30 if gpu else 8)
    # the loader's prefetched batches (2 per worker) must be used up before the steady state shows
    args.trainer_steps = args.trainer_steps or (100 if gpu else 12)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    args.compile = gpu if args.compile == "auto" else args.compile == "on"
    default_variants = VARIANTS if gpu and args.compile else ("peer", "ours", "trainer")
    args.variants = args.variants.split(",") if args.variants else list(default_variants)
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    args.out = args.out or RESULTS / f"train_{args.device.type}.json"
    return args


def random_batch(size: Size, batch: int, text_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Normal images, uniform token ids (past the 6 special ids); ours: labels = next ids, the peer: labels = ids."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size.image_size, size.image_size, generator=g)
    ids = torch.randint(6, size.vocab_size, (batch, text_len), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], dim=1)
    out = {"images": images, "ids": ids, "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def adamw(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer both sides use (VisionAttnModule's settings): AdamW, fused kernels on a GPU."""
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05, fused=device.type == "cuda"
    )


def ours_step(size: Size, batch: dict[str, torch.Tensor], device: torch.device, compile: str):
    """One training step of our model. compile: "off"; "forward" = `forward_groups` as
    `VisionAttnModule.configure_model` compiles it; "forward+loss" = the loss (fp32 log-softmax over the
    vocabulary) in the same compiled region, a candidate change measured here."""
    torch.manual_seed(0)
    model = VisionAttnModel(ours_config(size)).to(device).train()
    forward_groups = torch.compile(model.forward_groups) if compile == "forward" else model.forward_groups

    def loss_fn(images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return text_loss(forward_groups(images, [(ids, None)])[0], labels)

    loss_fn = torch.compile(loss_fn) if compile == "forward+loss" else loss_fn
    opt = adamw(model, device)
    images, ids, labels = batch["images"], batch["ids"], batch["labels"]

    def step() -> None:
        with autocast(device):
            loss = loss_fn(images, ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peer_step(size: Size, batch: dict[str, torch.Tensor], device: torch.device):
    """One training step of the HF peer: it shifts `labels` right into decoder inputs and returns the loss."""
    torch.manual_seed(0)
    model = build_peer(size).to(device).train()
    opt = adamw(model, device)
    images, labels = batch["images"], batch["ids"]

    def step() -> None:
        with autocast(device):
            loss = model(pixel_values=images, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class StepClock(L.Callback):
    """Marks every training step's end (a CUDA event: no host sync) and notes each batch's text length."""

    def __init__(self, device: torch.device) -> None:
        self.clock = Clock(device)
        self.images: list[int] = []
        self.text_len: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.clock.mark()
        self.images.append(batch["images"].shape[0])
        buckets = batch["caption"]  # length buckets: the mean padded length is what the decoder computed on
        self.text_len.append(sum(g["input_ids"].numel() for g in buckets) / sum(len(g["input_ids"]) for g in buckets))


def run_trainer(args: argparse.Namespace) -> dict[str, Any]:
    """Ours through `L.Trainer.fit` on `VisionAttnDataModule` (JPEGs decoded by the loader workers)."""
    from vision_attn.data.datamodule import VisionAttnDataModule
    from vision_attn.training import VisionAttnModule

    size, device = args.size, args.device
    if not (Path(args.data_root) / "train2014").is_dir():
        raise SystemExit(
            f"--data-root {args.data_root}: no train2014/ there. Make the built-in set with `python -m "
            "vision_attn.cli make-synthetic --out data/synthetic`, point --data-root at a COCO-layout folder, "
            "or leave `trainer` out of --variants."
        )
    clock = StepClock(device)
    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        dm = VisionAttnDataModule(
            root=args.data_root,
            tasks="caption",
            image_size=size.image_size,
            batch_size=args.batch,
            max_text_len=args.text_len,
            num_workers=args.workers,
            tokenizer_out=f"{tmp}/tokenizer.json",
            val_max_images=1,
        )
        dm.prepare_data()  # the trainer's own calls below keep the tokenizer this setup loads
        dm.setup("fit")
        # The same LM head as the tensor runs: pad the trained tokenizer with tokens the data never produces.
        extra = size.vocab_size - len(dm.tokenizer)
        dm.tokenizer.add_tokens([f"<unused{i}>" for i in range(max(0, extra))])
        cfg = ours_config(size)
        module = VisionAttnModule(
            encoder=cfg.encoder,
            decoder=cfg.decoder,
            lr=1e-4,
            warmup_steps=10,
            compile=args.compile,
            tokenizer=dm.tokenizer,
        )
        trainer = L.Trainer(
            accelerator="gpu" if gpu else "cpu",
            devices=[device.index or 0] if gpu else 1,
            precision="bf16-mixed" if gpu else "32-true",
            max_steps=args.warmup + args.trainer_steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,  # a progress bar reads the loss (a host sync) at every refresh
            enable_model_summary=False,
            log_every_n_steps=50,
            callbacks=[clock],
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=dm)
    steps_ms = clock.clock.intervals_ms()[args.warmup - 1 :] if args.warmup else clock.clock.intervals_ms()
    if not steps_ms:
        raise SystemExit(f"the trainer ran {len(clock.images)} steps: too few to time; lower --warmup")
    text_len = sum(clock.text_len[-len(steps_ms) :]) / len(steps_ms)
    return {"steps_ms": steps_ms, "text_len": text_len, "vocab_size": len(dm.tokenizer), "workers": args.workers}


def free_memory(device: torch.device) -> None:
    torch.compiler.reset()  # compiled code of the previous variant goes too
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per variant: step times in ms (and, for `trainer`, its mean text length), peak memory."""
    device, size = args.device, args.size
    batch = random_batch(size, args.batch, args.text_len, device)
    builders = {
        "peer": lambda: peer_step(size, batch, device),
        "ours_eager": lambda: ours_step(size, batch, device, "off"),
        "ours": lambda: ours_step(size, batch, device, "forward" if args.compile else "off"),
        "ours_compile_loss": lambda: ours_step(size, batch, device, "forward+loss"),
    }
    tensor_variants = [v for v in args.variants if v != "trainer"]
    out: dict[str, dict[str, Any]] = {}
    if device.type == "cpu" and tensor_variants:  # alternate the variants step by step; no memory figure on CPU
        steps = {name: builders[name]() for name in tensor_variants}
        times = time_interleaved(steps, args.steps, args.warmup, device)
        out = {name: {"steps_ms": times[name], "text_len": args.text_len} for name in tensor_variants}
        del steps
    else:
        for name in tensor_variants:
            free_memory(device)
            step = builders[name]()
            out[name] = {"steps_ms": time_calls(step, args.steps, args.warmup, device), "text_len": args.text_len}
            out[name]["peak_mem_gb"] = peak_memory_gb(device)
            del step
    if "trainer" in args.variants:
        free_memory(device)
        out["trainer"] = run_trainer(args)
        out["trainer"]["peak_mem_gb"] = peak_memory_gb(device)
    return out


WHAT = {
    "peer": "HF VisionEncoderDecoder (ViT + GPT-2), SDPA",
    "ours_eager": "ours, eager",
    "ours": "ours, as VisionAttnModule trains it",
    "ours_compile_loss": "ours, loss compiled with the forward",
    "trainer": "ours: Lightning Trainer + DataModule (JPEGs)",
}


def summarise(args: argparse.Namespace, raw: dict[str, dict[str, Any]], peak: float, datasheet: float | None):
    size, rows = args.size, []
    for name, r in raw.items():
        ms = median(r["steps_ms"])
        memory = size.num_patches + (int(size.class_token) if name == "peer" else 0)  # tokens the decoder sees
        flops = 3 * forward_flops(size, round(r["text_len"]), memory)["total"]  # per image, training
        images_s = args.batch / (ms * 1e-3)
        tflops = flops * images_s / 1e12
        row = {
            "variant": name,
            "what": WHAT[name] + (", torch.compile" if name in ("ours", "trainer") and args.compile else ""),
            "step_ms": ms,
            "images_per_s": images_s,
            "images_per_s_mean": args.batch * len(r["steps_ms"]) / (sum(r["steps_ms"]) * 1e-3),
            "tokens_per_s": images_s * r["text_len"],
            "text_len": r["text_len"],
            "train_gflop_per_image": flops / 1e9,
            "tflops": tflops,
            "mfu_measured_peak": tflops / peak,
            "mfu_datasheet": tflops / datasheet if datasheet else None,
            "peak_mem_gb": r.get("peak_mem_gb"),
            "steps_ms": r["steps_ms"],
        }
        row.update({k: r[k] for k in ("vocab_size", "workers") if k in r})
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    for r in rows:
        r["vs_peer"] = r["images_per_s"] / by["peer"]["images_per_s"] if "peer" in by else None
        r["vs_ours"] = r["images_per_s"] / by["ours"]["images_per_s"] if "ours" in by else None
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    device, size = args.device, args.size
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, peak_what = matmul_tflops(device)
    datasheet = datasheet_tflops(device)
    log.info("%s: %s at %.1f TFLOP/s; size %s, batch %d", device, peak_what, peak, size.name, args.batch)
    raw = measure(args)
    rows = summarise(args, raw, peak, datasheet)
    columns = [("variant", "variant", "s"), ("what", "what", "s"), ("images_per_s", "images/s", ".1f"),
               ("tokens_per_s", "tokens/s", ".0f"), ("step_ms", "step ms", ".1f"), ("peak_mem_gb", "peak GiB", ".1f"),
               ("tflops", "TFLOP/s", ".2f"), ("mfu_measured_peak", "MFU (measured)", ".1%"),
               ("mfu_datasheet", "MFU (datasheet)", ".1%"), ("vs_peer", "x peer", ".2f")]  # fmt: skip
    return report(
        "train_throughput",
        f"Training throughput: {size.name}, batch {args.batch}, text {args.text_len}, {device}",
        rows,
        columns,
        (device, argv, size, args.out),
        batch=args.batch,
        text_len=args.text_len,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile,
        precision="bf16 autocast" if device.type == "cuda" else "float32",
        peak_tflops_measured=peak,
        peak_measured_with=peak_what,
        peak_tflops_datasheet=datasheet,
    )


if __name__ == "__main__":
    main()
