"""The `vision-attn` command: make-synthetic, export, evaluate, caption, vqa, serve.

Training has its own command line (LightningCLI): `python train.py fit --config configs/demo.yaml`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from vision_attn.attention_maps import AttentionResult

log = logging.getLogger("vision_attn")
PICTURE_SIDE = 448  # attention pictures draw the image at most this large


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from vision_attn.data.synthetic import make_synthetic

    counts = make_synthetic(
        args.out,
        n_train=args.train,
        n_val=args.val,
        seed=args.seed,
        image_size=args.image_size,
        workers=args.workers,
        variant=args.variant,
    )
    print(json.dumps(counts))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vision_attn.export import export_checkpoint

    export_checkpoint(args.checkpoint, args.out_dir)
    print(f"exported {args.checkpoint} -> {args.out_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vision_attn.data.layout import read_split
    from vision_attn.evaluation import evaluate_records, load_results, score, with_baseline, write_results
    from vision_attn.metrics import java_available

    if (args.model is None) == (not args.results):
        print("error: give either --model (generate and score) or --results FILE... (score files)", file=sys.stderr)
        return 2
    records = read_split(Path(args.data_root), args.split)
    if args.max_images:
        records = records[: args.max_images]
    if args.results:
        preds = load_results(args.results, records, allow_partial=args.allow_partial)
    else:
        from vision_attn.inference import Pipeline
        from vision_attn.tasks import GenerationConfig

        pipe = Pipeline.from_pretrained(args.model, args.device, args.batch_size, compile=args.compile)
        answers = None if args.answer_beams is None else GenerationConfig(num_beams=args.answer_beams)
        preds = evaluate_records(
            pipe, records, config=GenerationConfig(num_beams=args.num_beams), answer_config=answers
        )
    meteor = java_available() and not args.no_meteor
    if preds.captions and not meteor:
        log.warning("METEOR skipped: %s", "--no-meteor" if args.no_meteor else "no Java runtime on PATH")
    metrics = score(preds, meteor=meteor)
    if args.baseline_split:
        metrics = with_baseline(metrics, read_split(Path(args.data_root), args.baseline_split), preds)
    out = Path(args.out or (Path(args.model).parent / "eval" if args.model else "eval"))
    write_results(preds, metrics, out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print(f"results written to {out}/")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vision_attn.data.errors import ImageLoadError
    from vision_attn.data.images import find_images
    from vision_attn.inference import Pipeline
    from vision_attn.tasks import GenerationConfig

    pipe = Pipeline.from_pretrained(
        args.model, args.device, args.batch_size, compile=args.compile, max_pixels=args.max_pixels
    )
    config = GenerationConfig(num_beams=args.num_beams)
    paths = find_images(args.paths)
    failed = 0
    pictures = _PictureNames(args.attention_dir)
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=len(paths) < 16)
    for start in range(0, len(paths), args.batch_size):
        # a batch keeps the model's input of each image and, for pictures, a copy of at most PICTURE_SIDE: memory
        # is bounded by the batch size, not by the files (a large JPEG is decoded reduced, a huge image refused)
        chunk, loaded = paths[start : start + args.batch_size], []
        for path in chunk:
            try:
                image = pipe.loader.load(path)
            except ImageLoadError as e:  # one line naming the file; the rest are still captioned
                tqdm.write(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            pixels = pipe.preprocess(image)
            if pictures.folder is not None:
                image.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
            loaded.append((path, pixels, image if pictures.folder is not None else None))
        if loaded:
            pixels = [x for _, x, _ in loaded]
            if pictures.folder is None:
                captions = pipe.caption(pixels, config)
                rows = [{"image": str(p), "caption": c} for (p, _, _), c in zip(loaded, captions, strict=True)]
            else:  # a picture per image, named in a third column
                results = pipe.caption_maps(pixels, config, args.attention_layer)
                rows = [
                    {"image": str(p), "caption": r.text, "attention_png": str(pictures.save(p, image, r, ".png"))}
                    for (p, _, image), r in zip(loaded, results, strict=True)
                ]
            for row in rows:
                print(json.dumps(row) if args.json else "\t".join(row.values()), flush=True)
        bar.update(len(chunk))
    bar.close()
    return 1 if failed else 0


class _PictureNames:
    """Writes attention PNGs into `folder` (None: writes nothing), one name per image: `stem.png`, or
    `stem_2.png`, ... when images of the same name come from different folders."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.used: set[str] = set()

    def save(
        self, image_path: str | Path, image: Image.Image, result: AttentionResult, suffix: str, title: str | None = None
    ) -> Path:
        """Draw `result` over `image` (loaded from `image_path`, which names the picture)."""
        from vision_attn.visualize import save_attention_figure

        assert self.folder is not None
        stem, n = Path(image_path).stem, 1
        while (name := f"{stem}{f'_{n}' if n > 1 else ''}{suffix}") in self.used:
            n += 1
        self.used.add(name)
        return save_attention_figure(image, result, self.folder / name, title)


def _beams(value: str) -> int:
    """--num-beams, --answer-beams: a whole number >= 1 (1 = greedy)."""
    try:
        beams = int(value)
    except ValueError:
        beams = 0
    if beams < 1:
        raise argparse.ArgumentTypeError(f"expected a number of beams >= 1 (1 = greedy), got {value!r}")
    return beams


def _layer(value: str) -> int | str:
    """--attention-layer: "mean" or a decoder layer index (negative counts from the last)."""
    if value == "mean":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'mean' or a layer index such as -1, got {value!r}") from None


def cmd_vqa(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from vision_attn.inference import Pipeline
    from vision_attn.tasks import GenerationConfig

    pipe = Pipeline.from_pretrained(args.model, device=args.device, max_pixels=args.max_pixels)
    row = {"image": args.image, "question": args.question}
    if args.top_k:
        if args.attention_dir:
            raise SystemExit("error: --attention-dir maps the generated answer; use it without --top-k")
        ranked = pipe.rank_answers(args.image, args.question, args.top_k, GenerationConfig(num_beams=args.num_beams))
        if args.json:
            print(
                json.dumps({**row, "answer": ranked.answers[0].answer, "answers": [asdict(a) for a in ranked.answers]})
            )
        else:
            for a in ranked.answers:
                print(f"{a.probability:.4f}\t{a.answer}")
        return 0
    config = GenerationConfig(num_beams=args.num_beams)
    if args.attention_dir is None:
        ans = pipe.answer(args.image, args.question, config)
        print(json.dumps({**row, "answer": ans}) if args.json else ans)
        return 0
    image = pipe.loader.load(args.image)
    res = pipe.answer_maps(image, args.question, config, args.attention_layer)
    image.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
    title = f"Q: {args.question}   A: {res.text}"
    png = _PictureNames(args.attention_dir).save(args.image, image, res, ".vqa.png", title)
    row = {**row, "answer": res.text, "attention_png": str(png)}
    print(json.dumps(row) if args.json else f"{res.text}\t{png}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from vision_attn.serving import Limits, ServeOptions, Timeouts, build_server, run

    try:
        limits = Limits(int(args.max_body_mb * 2**20), args.max_pixels, args.max_question_chars)
        timeouts = Timeouts(args.timeout, args.keep_alive_timeout, args.header_timeout, args.body_timeout)
        named = {f.name for f in dataclasses.fields(ServeOptions)}  # the other flags: the fields of the same names
        options = ServeOptions(**{k: v for k, v in vars(args).items() if k in named}, timeouts=timeouts, limits=limits)
        server = build_server(args.model, options)  # loads the model: before binding, so errors come first
    except ValueError as e:  # not a model folder, or a bad setting: say so in one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(server)
    return 0


def _max_pixels_option(s: argparse.ArgumentParser) -> None:
    from vision_attn.data.images import MAX_PIXELS

    s.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse larger images, width x height, before decoding them (default {MAX_PIXELS:,}; a JPEG counts "
        "the pixels of its reduced decode)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-attn", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    from vision_attn.data.synthetic.variants import VARIANTS

    s = sub.add_parser(
        "make-synthetic",
        help="write the built-in dataset (or a variant of it) in the COCO 2014 + VQAv2 layout",
        description="Write a synthetic dataset in the COCO 2014 + VQAv2 layout. Variants (--variant):\n"
        + "\n".join(f"  {v.name:10s} {v.image_size:3d} px: {v.summary}" for v in VARIANTS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--variant", choices=list(VARIANTS), default="demo", help="which data (default: demo)")
    s.add_argument("--train", type=int, default=20000, help="training images")
    s.add_argument("--val", type=int, default=1000, help="validation images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="rendered image side in pixels (default: the variant's: "
        + ", ".join(f"{v.name} {v.image_size}" for v in VARIANTS.values())
        + ")",
    )
    s.add_argument("--workers", type=int, default=None, help="rendering processes (default: up to 4)")
    s.set_defaults(func=cmd_make_synthetic)

    s = sub.add_parser("export", help="checkpoint -> model folder (config.json, model.safetensors, tokenizer.json)")
    s.add_argument("checkpoint", help="a Lightning .ckpt written by train.py")
    s.add_argument("out_dir", help="output model folder")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser(
        "evaluate", help="caption and answer a split (or read result files); write result files and metrics.json"
    )
    s.add_argument("--model", default=None, help="model folder from `vision-attn export`")
    s.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="FILE",
        help="score result files made elsewhere instead of a model: COCO captions results and/or VQAv2 results json",
    )
    s.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --results: score files that leave out some of the split's ids (metrics.json records partial: true)",
    )
    s.add_argument("--data-root", required=True, help="folder in the COCO 2014 + VQAv2 layout")
    s.add_argument("--split", default="val")
    s.add_argument("--baseline-split", default=None, help="add per-type majority-answer baselines from this split")
    s.add_argument("--out", default=None, help="output folder (default: next to the model, eval/)")
    s.add_argument("--max-images", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument(
        "--num-beams", type=_beams, default=1, help="beams for captions, and for answers unless --answer-beams"
    )
    s.add_argument(
        "--answer-beams",
        type=_beams,
        default=None,
        help="beams for answers (default: --num-beams); answers are a word or two, where beams change little",
    )
    s.add_argument("--device", default="auto")
    s.add_argument("--compile", action="store_true", help="compile the decoding step (CUDA graphs on a GPU)")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (computed by default when Java is present)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("caption", help="caption image files and folders (searched recursively)")
    s.add_argument("--model", required=True)
    s.add_argument("--json", action="store_true", help="JSON lines instead of path<TAB>caption")
    s.add_argument("--num-beams", type=_beams, default=1)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step (CUDA graphs on a GPU): faster for many images, slow to start",
    )
    s.add_argument(
        "--attention-dir", default=None, help="also write a PNG per image: the image, a heatmap per word, the rollout"
    )
    s.add_argument(
        "--attention-layer", type=_layer, default="mean", help="decoder layer of the maps: 'mean' (default) or an index"
    )
    _max_pixels_option(s)
    s.add_argument("paths", nargs="+")
    s.set_defaults(func=cmd_caption)

    s = sub.add_parser("vqa", help="answer a question about an image")
    s.add_argument("--model", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--question", required=True)
    s.add_argument("--num-beams", type=_beams, default=1)
    s.add_argument("--top-k", type=int, default=None, help="print the K most likely answers with probabilities")
    s.add_argument("--json", action="store_true")
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--attention-dir", default=None, help="also write a PNG per image: the image, a heatmap per word, the rollout"
    )
    s.add_argument(
        "--attention-layer", type=_layer, default="mean", help="decoder layer of the maps: 'mean' (default) or an index"
    )
    _max_pixels_option(s)
    s.set_defaults(func=cmd_vqa)

    s = sub.add_parser(
        "serve",
        help="HTTP API (POST /v1/vqa, POST /v1/caption, GET /health, /openapi.json) and the attention page at /",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--model", required=True, help="model folder from `vision-attn export`")
    s.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"], help="address to bind")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--max-batch-size", type=int, default=16, help="most concurrent requests run as one batch; 1 = off")
    s.add_argument("--batch-timeout", type=float, default=0.01, help="seconds a batch waits to fill after its first")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for the model (then 504)")
    s.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (413 over it)")
    s.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image, width x height (422 over it)")
    s.add_argument("--max-question-chars", type=int, default=500, help="longest question (422 over it)")
    s.add_argument(
        "--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection stays open after an answer"
    )
    s.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has for a whole request head, from its opening or its last answer",
    )
    s.add_argument("--body-timeout", type=float, default=60.0, help="seconds a request body may take (then 408)")
    s.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections at most (503 over it; fewer if ulimit -n is low)",
    )
    levels = ["debug", "info", "warning", "error"]
    s.add_argument("--log-level", default="info", choices=levels, help="server log level")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from vision_attn.data.errors import DataFormatError, ImageLoadError
    from vision_attn.models import ModelFolderError

    try:
        return args.func(args)
    except (DataFormatError, ModelFolderError, ImageLoadError) as e:
        # bad data, result files, model folder or image: one line naming the file and what is wrong, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
