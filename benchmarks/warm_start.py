"""Warm start against scratch: a decoder that starts from a pretrained causal LM, at equal optimizer steps.

    python -m benchmarks.warm_start             # CPU, about 25 minutes: 2 LMs pretrained 3 min each, 5 captioners
    python -m benchmarks.warm_start --quick     # a smoke run of every stage (a minute or two), not a figure

1. The built-in synthetic set (`make-synthetic`, as the Makefile makes it) unless --data-root holds one.
2. A GPT-2-style byte-level BPE (no task tokens, `<|endoftext|>` as BOS and EOS) trained on the training text
   as the captioner lays it out ("Caption: ...", "Question: ... Answer: ..."). Warm and scratch share it, so it
   decides nothing between them; with questions in it, question words are words rather than bytes for all four.
3. Two small causal LMs with transformers, the demo decoder's sizes (width 128, 3 layers, 4 heads): GPT2LMHeadModel
   and LlamaForCausalLM (grouped-query attention, 2 key/value heads; SwiGLU width 344, about GPT-2's MLP
   parameters). Each is saved twice with `save_pretrained`: its random initial weights ("scratch") and, after
   --pretrain-minutes of AdamW on the training captions only ("<|endoftext|> caption<|endoftext|>", the caption
   tokenized with its leading space as the captioner's targets are), its pretrained weights ("warm"). So warm and
   scratch differ in the weights alone: same architecture, tokenizer, gate, data order and new-layer init.
4. `train.py fit --config configs/demo.yaml --model.decoder.pretrained <folder>` for each folder, all for the same
   --steps optimizer steps (cosine schedule over them, no time limit, no validation), then `vision-attn export` and
   `vision-attn evaluate` on --eval-images of the val split. `--reference` adds the demo's own from-scratch decoder
   (family "base", its own BPE with task tokens) at the same steps.
Per run: the training caption loss (mean over the first and the last --loss-window logged steps of metrics.csv),
BLEU-4, CIDEr, VQA accuracy; per family the warm/scratch ratios and differences.
Diagnostics (benchmarks/README.md, "Warm start"): --gate-init ALPHA opens the cross-attention gates at the start,
--reuse-lms takes the LM folders of the last run, --tag keeps this run's folders apart, and flags after `--` go to
every `train.py fit` (for example `-- --model.pretrained_lr 2e-4`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from benchmarks.peers import SIZES
from benchmarks.record import RESULTS, print_table, report, run_python
from vision_attn.data.layout import ImageRecord, read_split

log = logging.getLogger("benchmarks.warm_start")
END = "<|endoftext|>"  # GPT-2's one special token: BOS, EOS and (in the captioner) padding
FAMILIES = ("gpt2", "llama")
SIZE = SIZES["demo"]  # configs/demo.yaml: the decoder's width, depth and heads below are its


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"), help="the built-in set (made if absent)")
    p.add_argument("--make-train", type=int, default=20000, help="training images if the set is made")
    p.add_argument("--make-val", type=int, default=1000, help="validation images if the set is made")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work"), help="LM folders and runs (git-ignored)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of gpt2,llama")
    p.add_argument("--pretrain-minutes", type=float, default=3.0, help="LM pretraining time per family")
    p.add_argument("--pretrain-batch", type=int, default=64, help="captions per LM pretraining step")
    p.add_argument("--pretrain-lr", type=float, default=2e-3, help="peak LM learning rate (cosine over the time)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of every captioner")
    p.add_argument("--eval-images", type=int, default=1000, help="val images `vision-attn evaluate` scores")
    p.add_argument("--loss-window", type=int, default=20, help="logged steps the caption loss is averaged over")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True, help="the demo's decoder too")
    p.add_argument("--gate-init", type=float, help="diagnostic: start every cross-attention gate's alpha here, not 0")
    p.add_argument("--reuse-lms", action="store_true", help="use the LM folders of an earlier run in --work")
    p.add_argument("--tag", default="", help="prefix of this run's folders under --work/runs (keeps earlier runs)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, here and in every subprocess")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run; results go under --work")
    p.add_argument("--out", type=Path, help="results json (default: benchmarks/results/warm_start_cpu.json)")
    p.add_argument("extra", nargs="*", help="more `train.py fit` flags for every captioner, after --")
    args = p.parse_args(argv)
    args.families = args.families.split(",")
    if unknown := set(args.families) - set(FAMILIES):
        p.error(f"--families: unknown {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if args.quick:  # its own folder: the LM folders of a full run stay
        args.work = args.work / "quick"
        args.data_root = args.work / "synthetic"
        args.make_train, args.make_val = 512, 32
        args.pretrain_minutes, args.steps, args.eval_images, args.loss_window = 0.1, 12, 16, 4
    args.out = args.out or (args.work / "warm_start_quick.json" if args.quick else RESULTS / "warm_start_cpu.json")
    args.data_root, args.work = args.data_root.resolve(), args.work.resolve()  # the subprocesses run in the repo
    return args


# ---- data and tokenizer ----


def ensure_data(args: argparse.Namespace) -> None:
    """Make the built-in set with the Makefile's command unless --data-root already holds both splits."""
    root = args.data_root
    if (root / "train2014").is_dir() and (root / "val2014").is_dir():
        return
    log.info("making the built-in set in %s", root)
    cmd = ["-m", "vision_attn.cli", "make-synthetic", "--out", str(root), "--train", str(args.make_train)]
    cmd += ["--val", str(args.make_val), "--seed", str(args.seed)]
    run_python(cmd, args.threads, root.parent / "make-synthetic.log")


def train_tokenizer(records: list[ImageRecord]) -> PreTrainedTokenizerFast:
    """GPT-2's kind of tokenizer (byte-level BPE, no normalizer, no prefix space, one `<|endoftext|>` token), trained
    on the captioner's training texts as it lays them out with a pretrained LM's tokenizer (`vision_attn.tasks`)."""

    def texts():
        for r in records:
            yield from (f"Caption: {c.strip()}" for c in r.captions)
            yield from (f"Question: {q.question.strip()} Answer: {q.answer}" for q in r.questions if q.answer)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000,  # the demo's limit; the built-in set's small language runs out of merges long before
        min_frequency=2,
        special_tokens=[END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END, eos_token=END)


def caption_ids(tok: PreTrainedTokenizerFast, records: list[ImageRecord]) -> list[list[int]]:
    """<|endoftext|> caption<|endoftext|> per caption, the caption with the leading space of the captioner's targets."""
    end = tok.convert_tokens_to_ids(END)
    backend = tok.backend_tokenizer
    texts = [" " + c.strip() for r in records for c in r.captions]
    return [[end, *e.ids, end] for e in backend.encode_batch(texts, add_special_tokens=False)]


# ---- the language models ----


def build_lm(family: str, vocab_size: int, end: int, seed: int) -> torch.nn.Module:
    """A random causal LM of `family` at the demo decoder's sizes, no dropout (as the demo decoder)."""
    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "bos_token_id": end, "eos_token_id": end, "tie_word_embeddings": True}
    if family == "gpt2":
        cfg = GPT2Config(
            n_embd=SIZE.dec_dim,
            n_layer=SIZE.dec_depth,
            n_head=SIZE.dec_heads,
            n_positions=SIZE.max_len,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        hidden_size=SIZE.dec_dim,
        intermediate_size=344,  # SwiGLU's three matrices at about GPT-2's two of 4 x 128
        num_hidden_layers=SIZE.dec_depth,
        num_attention_heads=SIZE.dec_heads,
        num_key_value_heads=SIZE.dec_heads // 2,  # grouped-query attention
        max_position_embeddings=SIZE.max_len,
        **common,
    )
    return LlamaForCausalLM(cfg)


def batches(seqs: list[list[int]], batch: int, pad: int, generator: torch.Generator):
    """Endless shuffled batches: (ids [B, T], labels [B, T] with -100 on padding)."""
    while True:
        order = torch.randperm(len(seqs), generator=generator).tolist()
        for i in range(0, len(order) - batch + 1, batch):
            chunk = [seqs[j] for j in order[i : i + batch]]
            width = max(map(len, chunk))
            ids = torch.full((batch, width), pad)
            labels = torch.full((batch, width), -100)
            for row, s in enumerate(chunk):
                ids[row, : len(s)] = torch.tensor(s)
                labels[row, : len(s)] = torch.tensor(s)
            yield ids, labels


def pretrain(model: torch.nn.Module, seqs: list[list[int]], pad: int, args: argparse.Namespace) -> dict[str, Any]:
    """AdamW with the causal LM loss for --pretrain-minutes: warm-up of 100 steps, cosine decay (to 10% of the peak)
    over the elapsed fraction of the time budget, gradient clipping at 1."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=args.pretrain_lr,
        betas=(0.9, 0.98),
    )
    budget = args.pretrain_minutes * 60
    model.train()
    data = batches(seqs, args.pretrain_batch, pad, torch.Generator().manual_seed(args.seed))
    start, step, curve = time.monotonic(), 0, []
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        scale = min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = args.pretrain_lr * scale
        ids, labels = next(data)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0:
            curve.append((step, round(elapsed, 1), loss.item()))
    model.eval()
    return {"steps": step, "seconds": time.monotonic() - start, "sequences": step * args.pretrain_batch, "curve": curve}


@torch.no_grad()
def lm_loss(model: torch.nn.Module, seqs: list[list[int]], pad: int) -> float:
    """Mean next-token loss per token over `seqs` (held-out captions)."""
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(seqs), 128):
        chunk = seqs[i : i + 128]
        width = max(map(len, chunk))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in chunk])
        n = int((labels[:, 1:] != -100).sum())
        total += model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.item() * n
        tokens += n
    return total / tokens


def save_lm(model: torch.nn.Module, tok: PreTrainedTokenizerFast, folder: Path) -> Path:
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_lms(args: argparse.Namespace) -> dict[str, Any]:
    """Per family: the scratch and warm folders, pretraining figures, and both LMs' loss on val captions; with
    --reuse-lms those of the earlier run recorded in --work/lms.json."""
    record = args.work / "lms.json"
    if args.reuse_lms:
        if not record.is_file():
            raise SystemExit(f"--reuse-lms: no {record}; run once without it")
        lms = json.loads(record.read_text())
        if missing := set(args.families) - set(lms):
            raise SystemExit(f"--reuse-lms: {record} has no {sorted(missing)} LM; run once without --reuse-lms")
        return lms
    lms = pretrain_lms(args)
    record.write_text(json.dumps(lms, indent=2, default=str) + "\n")
    return json.loads(record.read_text())


def pretrain_lms(args: argparse.Namespace) -> dict[str, Any]:
    train, val = read_split(args.data_root, "train"), read_split(args.data_root, "val")
    tok = train_tokenizer(train)
    end = tok.convert_tokens_to_ids(END)
    seqs, held_out = caption_ids(tok, train), caption_ids(tok, val)[:2000]
    longest = max(map(len, seqs))
    if longest > SIZE.max_len:
        raise SystemExit(f"a training caption takes {longest} tokens, more than the LMs' {SIZE.max_len} positions")
    log.info("tokenizer: %d tokens; %d training captions, at most %d tokens", len(tok), len(seqs), longest)
    out: dict[str, dict[str, Any]] = {}
    for family in args.families:
        model = build_lm(family, len(tok), end, args.seed)
        scratch = save_lm(model, tok, args.work / f"lm-{family}-scratch")
        scratch_loss = lm_loss(model, held_out, end)
        log.info(
            "pretraining the %s LM (%d parameters) for %.1f min", family, model.num_parameters(), args.pretrain_minutes
        )
        stats = pretrain(model, seqs, end, args)
        warm = save_lm(model, tok, args.work / f"lm-{family}")
        out[family] = {
            "scratch": scratch,
            "warm": warm,
            "parameters": model.num_parameters(),
            "pretrain": stats,
            "lm_val_loss": {"scratch": scratch_loss, "warm": lm_loss(model, held_out, end)},
        }
        log.info("%s: %d steps, val caption loss %.3f -> %.3f", family, stats["steps"], scratch_loss,
                 out[family]["lm_val_loss"]["warm"])  # fmt: skip
    out["tokenizer"] = {"vocab_size": len(tok), "captions": len(seqs), "longest": longest}
    return out


# ---- the captioners ----


class GateInit(L.Callback):
    """Diagnostic (--gate-init): every cross-attention gate's alpha starts at `alpha` instead of 0 (closed)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gates = [p for n, p in pl_module.named_parameters() if n.endswith("cross_gate.alpha")]
        with torch.no_grad():
            for p in gates:
                p.fill_(self.alpha)
        log.info("GateInit: %d gates at alpha %.3f (tanh %.3f)", len(gates), self.alpha, math.tanh(self.alpha))


def captioner(name: str, lm: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """train.py fit (demo config, --steps steps), export, evaluate; the run's losses, metrics and times."""
    run = args.work / "runs" / f"{args.tag}{name}"
    fit = ["train.py", "fit", "--config", "configs/demo.yaml", "--seed_everything", str(args.seed)]
    fit += ["--data.root", str(args.data_root), "--trainer.default_root_dir", str(run)]
    fit += ["--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1", "--trainer.max_time", "null"]
    fit += ["--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    fit += ["--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]
    fit += ["--model.decoder.pretrained", str(lm)] if lm else []
    if args.gate_init is not None and lm:  # the demo's own decoder has no gate
        fit += ["--trainer.callbacks+=benchmarks.warm_start.GateInit", f"--trainer.callbacks.alpha={args.gate_init}"]
    fit += args.extra
    if args.quick:
        fit += ["--model.warmup_steps", "4"]
    fit_s = run_python(fit, args.threads, run / "fit.log")
    export = ["-m", "vision_attn.cli", "export", str(run / "checkpoints" / "last.ckpt"), str(run / "model")]
    run_python(export, args.threads, run / "export.log")
    evaluate = ["-m", "vision_attn.cli", "evaluate", "--model", str(run / "model"), "--data-root", str(args.data_root)]
    evaluate += ["--split", "val", "--max-images", str(args.eval_images), "--out", str(run / "eval")]
    eval_s = run_python([*evaluate, "--no-meteor", "--device", "cpu"], args.threads, run / "evaluate.log")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    losses = logged(run / "metrics.csv")
    if len(losses["caption_loss"]) != args.steps:
        raise SystemExit(f"{run}: {len(losses['caption_loss'])} logged steps, expected {args.steps}")
    w = args.loss_window
    return {
        "run": name,
        "dir": str(run),
        "steps": args.steps,
        "fit_s": fit_s,
        "eval_s": eval_s,
        "caption_loss_first": mean(losses["caption_loss"][:w]),
        "caption_loss_last": mean(losses["caption_loss"][-w:]),
        "vqa_loss_last": mean(losses["vqa_loss"][-w:]),
        "bleu4": metrics["bleu4"],
        "cider": metrics["cider"],
        "vqa_accuracy": metrics["vqa_accuracy"],
        "eval_images": args.eval_images,
        "caption_loss_curve": losses["caption_loss"],
    }


def logged(path: Path) -> dict[str, list[float]]:
    """train/caption_loss and train/vqa_loss of every logged step of a run's metrics.csv."""
    out: dict[str, list[float]] = {"caption_loss": [], "vqa_loss": []}
    with path.open() as f:
        for row in csv.DictReader(f):
            for key in out:
                if row.get(f"train/{key}"):
                    out[key].append(float(row[f"train/{key}"]))
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def compare(rows: list[dict[str, Any]], families: list[str]) -> list[dict[str, Any]]:
    """Per family, warm against scratch: loss ratio (below 1: warm is lower) and metric differences (above 0)."""
    by = {r["run"]: r for r in rows}
    out = []
    for family in families:
        warm, scratch = by[f"{family} warm"], by[f"{family} scratch"]
        out.append({
            "family": family,
            "caption_loss_ratio": warm["caption_loss_last"] / scratch["caption_loss_last"],
            "vqa_loss_ratio": warm["vqa_loss_last"] / scratch["vqa_loss_last"],
            "bleu4_diff": warm["bleu4"] - scratch["bleu4"],
            "cider_diff": warm["cider"] - scratch["cider"],
            "cider_ratio": warm["cider"] / scratch["cider"] if scratch["cider"] else None,
            "vqa_accuracy_diff": warm["vqa_accuracy"] - scratch["vqa_accuracy"],
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    transformers.logging.set_verbosity_error()  # "loss_type=None ... unrecognized" from every LM built from a config
    transformers.logging.disable_progress_bar()  # save_pretrained's "Writing model shards"
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    ensure_data(args)
    lms = make_lms(args)
    rows = []
    for family in args.families:
        for init in ("warm", "scratch"):
            log.info("captioner: %s %s, %d steps", family, init, args.steps)
            row = captioner(f"{family}-{init}", Path(lms[family][init]), args)
            row |= {"run": f"{family} {init}", "family": family, "init": init}
            row |= {"lm_val_loss": lms[family]["lm_val_loss"][init], "lm_parameters": lms[family]["parameters"]}
            rows.append(row)
    if args.reference:
        log.info("captioner: the demo's decoder, %d steps", args.steps)
        rows.append(captioner("demo-base", None, args) | {"run": "demo (base)", "family": "base", "init": "scratch"})
    comparisons = compare(rows, args.families)
    columns = [("run", "run", "s"), ("lm_val_loss", "LM loss, val captions", ".3f"),
               ("caption_loss_first", "caption loss, first", ".3f"), ("caption_loss_last", "caption loss, last", ".3f"),
               ("vqa_loss_last", "VQA loss, last", ".3f"), ("bleu4", "BLEU-4", ".3f"), ("cider", "CIDEr", ".3f"),
               ("vqa_accuracy", "VQA acc %", ".1f"), ("fit_s", "fit s", ".0f")]  # fmt: skip
    payload = report(
        "warm_start",
        f"Warm start vs scratch: {args.steps} steps of configs/demo.yaml, {args.eval_images} val images",
        rows,
        columns,
        (torch.device("cpu"), argv, SIZE, args.out),
        steps=args.steps,
        loss_window=args.loss_window,
        eval_images=args.eval_images,
        pretrain_minutes=args.pretrain_minutes,
        pretrain_batch=args.pretrain_batch,
        pretrain_lr=args.pretrain_lr,
        gate_init=args.gate_init,
        extra_fit_flags=args.extra,
        tokenizer=lms["tokenizer"],
        language_models={f: {k: v for k, v in lms[f].items() if k not in ("warm", "scratch")} for f in args.families},
        comparisons=comparisons,
    )
    print("\nwarm against scratch (ratio < 1 and difference > 0: warm is better)\n")
    print_table(comparisons, [("family", "family", "s"), ("caption_loss_ratio", "caption loss ratio", ".3f"),
                              ("vqa_loss_ratio", "VQA loss ratio", ".3f"), ("bleu4_diff", "BLEU-4 diff", "+.3f"),
                              ("cider_diff", "CIDEr diff", "+.3f"), ("cider_ratio", "CIDEr ratio", ".2f"),
                              ("vqa_accuracy_diff", "VQA acc diff", "+.1f")])  # fmt: skip
    return payload


if __name__ == "__main__":
    main()
