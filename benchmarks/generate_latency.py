"""Caption latency: our `generate` vs the Hugging Face VisionEncoderDecoder peer's `generate()`.

    python -m benchmarks.generate_latency                  # GPU: ViT-B/16 + 12x768 decoder, bf16 weights
    python -m benchmarks.generate_latency --device cpu --model-dir runs/demo/model   # CPU, demo size

Both sides encode the images and then decode 20 new tokens after the same two-token caption prompt
(<bos> <caption>), greedy and beam search with 3 beams, at batch 1 and 64 (CPU ViT-B: 1 and 4).
Exactly 20 tokens on both sides, with no logits masking on either: the peer's generation config has no EOS
(`eos_token_id=None`), and ours gets `eos_token_id=-1`, an id no token has. Both still run their per-token
"has every sequence ended?" check. The run checks that every output has 20 new tokens.
Ours at the demo size is the trained demo model (`--model-dir`; its encoder has a conv stem, the peer's HF ViT a
patch projection) or, without `--model-dir`, a random model of the same shape; the peer is random, same shape.
Weights are bf16 on a GPU and float32 on CPU for both. Latency is the median over repetitions; on CPU ours and
the peer alternate call by call (a shared machine slows both alike), on a GPU each runs alone.
`ours_compiled`: our `generate` with a `CompiledDecoder` (what `Pipeline(compile=True)` uses): each token's step is
compiled once per shape (replayed as a CUDA graph on a GPU, inductor C++ kernels on CPU; compilation happens
in the untimed calls).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers import PROMPT, Size, build_peer, ours_config
from benchmarks.record import RESULTS, report
from benchmarks.timing import add_common_args, median, setup, time_calls, time_interleaved
from vision_attn.decoding import CompiledDecoder
from vision_attn.models import VisionAttnModel
from vision_attn.tasks import GenerationConfig, generate

log = logging.getLogger("benchmarks.generate_latency")
VARIANTS = ("peer", "ours", "ours_compiled")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--model-dir", type=Path, help="an exported model folder for ours (default: random weights)")
    p.add_argument("--batch-sizes", help="comma-separated (default: 1,64; ViT-B on CPU: 1,4)")
    p.add_argument("--beams", default="1,3", help="comma-separated beam counts (1 = greedy)")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--reps", type=int, help="timed calls per case (default: 20 on a GPU, 10 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default: 3 on a GPU, 2 on CPU)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--out", type=Path, help="results json (default: benchmarks/results/generate_<cpu|cuda>.json)")
    args = p.parse_args(argv)
    setup(args)
    gpu = args.device.type == "cuda"
    default_batches = "1,4" if not gpu and args.size.name == "vit_b16" else "1,64"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    args.beams = [int(k) for k in args.beams.split(",")]
    args.reps = args.reps or (20 if gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 2)
    args.variants = args.variants.split(",") if args.variants else list(VARIANTS)
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.out = args.out or RESULTS / f"generate_{args.device.type}.json"
    return args


def load_ours(size: Size, model_dir: Path | None, device: torch.device, dtype: torch.dtype) -> VisionAttnModel:
    """Our model (exported folder or random init), with an EOS id no token has: it always runs all new tokens."""
    if model_dir is not None:
        model = VisionAttnModel.from_pretrained(model_dir)
        got = (model.config.encoder.image_size, model.config.decoder.dim, model.config.decoder.vocab_size)
        want = (size.image_size, size.dec_dim, size.vocab_size)
        if got != want:
            raise SystemExit(f"--model-dir {model_dir}: (image, width, vocabulary) {got} != --size {size.name} {want}")
    else:
        torch.manual_seed(0)
        model = VisionAttnModel(ours_config(size))
    model.config = dataclasses.replace(model.config, eos_token_id=-1)
    return model.to(device=device, dtype=dtype).eval()


def load_peer(size: Size, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The HF peer with no EOS in its generation config: it always runs all new tokens."""
    torch.manual_seed(0)
    model = build_peer(size)
    model.generation_config.eos_token_id = None
    return model.to(device=device, dtype=dtype).eval()


def callers(args: argparse.Namespace, ours, compiled, peer, batch: int, beams: int) -> dict[str, Any]:
    """One zero-argument call per variant for this case; each returns the new tokens of every output."""
    size, device, dtype = args.size, args.device, next(ours.parameters()).dtype
    g = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, size.image_size, size.image_size, generator=g).to(device=device, dtype=dtype)
    prompt_ids = torch.tensor([PROMPT] * batch, device=device)
    n = args.new_tokens
    config = GenerationConfig(max_new_tokens=n, num_beams=beams)
    fns: dict[str, Any] = {}
    for name, comp in (("ours", None), ("ours_compiled", compiled)):
        if name in args.variants:
            fns[name] = lambda comp=comp: generate(ours, images, [PROMPT] * batch, config, compiled=comp).sequences
    if "peer" in args.variants:

        @torch.inference_mode()
        def run_peer() -> list[list[int]]:
            out = peer.generate(
                pixel_values=images, decoder_input_ids=prompt_ids, max_new_tokens=n, num_beams=beams, do_sample=False
            )
            return out[:, len(PROMPT) :].tolist()

        fns["peer"] = run_peer
    return fns


def same_share(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    device, size = args.device, args.size
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours = load_ours(size, args.model_dir, device, dtype)
    peer = load_peer(size, device, dtype)
    compiled = CompiledDecoder(ours) if "ours_compiled" in args.variants else None
    rows: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        for beams in args.beams:
            fns = callers(args, ours, compiled, peer, batch, beams)
            tokens = {name: fn() for name, fn in fns.items()}  # checked once per case, outside the timing
            for name, seqs in tokens.items():
                if [len(s) for s in seqs] != [args.new_tokens] * batch:
                    raise RuntimeError(f"{name} generated {[len(s) for s in seqs]} tokens, not {args.new_tokens} each")
            if device.type == "cpu":
                times = time_interleaved(fns, args.reps, args.warmup, device)
            else:
                times = {name: time_calls(fn, args.reps, args.warmup, device) for name, fn in fns.items()}
            for name, ms in times.items():
                latency = median(ms)
                rows.append(
                    {
                        "variant": name,
                        "batch": batch,
                        "beams": beams,
                        "latency_ms": latency,
                        "captions_per_s": batch / (latency * 1e-3),
                        "new_tokens_per_s": batch * args.new_tokens / (latency * 1e-3),
                        "calls_ms": ms,
                        # the share of captions equal to ours' (same weights; bf16 kernels may break near-ties)
                        "same_tokens_as_ours": same_share(tokens[name], tokens["ours"])
                        if name.startswith("ours") and "ours" in tokens
                        else None,
                    }
                )
            log.info("batch %d, beams %d: %s", batch, beams, {n: round(median(t), 2) for n, t in times.items()})
    peer_ms = {(r["batch"], r["beams"]): r["latency_ms"] for r in rows if r["variant"] == "peer"}
    for r in rows:
        ref = peer_ms.get((r["batch"], r["beams"]))
        r["speedup_vs_peer"] = ref / r["latency_ms"] if ref else None
    stem = "conv stem (ours), patch projection (peer)" if size.stem == "conv" else "patch projection (both)"
    columns = [("variant", "variant", "s"), ("batch", "batch", "d"), ("beams", "beams", "d"),
               ("latency_ms", "latency ms", ".1f"), ("captions_per_s", "captions/s", ".1f"),
               ("new_tokens_per_s", "new tokens/s", ".0f"), ("speedup_vs_peer", "x peer", ".2f")]  # fmt: skip
    title = f"Caption latency: {size.name}, {args.new_tokens} new tokens, {device}, {stem}"
    return report(
        "generate_latency",
        title,
        rows,
        columns,
        (device, argv, size, args.out),
        ours_weights=str(args.model_dir) if args.model_dir else "random init",
        encoder_stem=stem,
        dtype=str(dtype).removeprefix("torch."),
        new_tokens=args.new_tokens,
        prompt=PROMPT,
        token_budget="exactly new_tokens: peer eos_token_id=None, ours eos_token_id=-1; no logits masking",
        reps=args.reps,
        warmup=args.warmup,
    )


if __name__ == "__main__":
    main()
