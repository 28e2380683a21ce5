"""Wheels for the bare GPU machine: what `benchmarks/gpu_suite.sh` imports that its python3 (3.12) lacks.

    make gpu-wheels                                   # = python -m benchmarks.gpu_wheels --out .whl

That machine's python3 already has torch, torchvision, timm, transformers, lightning, tokenizers, safetensors,
numpy, pillow, matplotlib, tqdm, pyyaml, typing-extensions and pytest; it reaches no package registry. Missing,
and downloaded here (pure Python, `py3-none-any`):
    jsonargparse, docstring-parser, typeshed-client   LightningCLI (`train.py`): jsonargparse[signatures]
    pycocoevalcap                                     validation's BLEU, ROUGE-L and CIDEr (`vision_attn.metrics`)
pycocoevalcap's wheel is 104 MB, almost all of it Java: the Stanford CoreNLP tokenizer, METEOR's jar and its 62 MB
paraphrase table, SPICE. The suite uses none of it (our tokenizer is pure Python; METEOR and SPICE need Java), and
the working tree travels with a 64 MiB limit, so the wheel is rewritten without the `.jar` and `.gz` files (its
RECORD rewritten to match). The versions are the ones the project is tested with. The suite installs the folder with
`pip install --no-index --no-deps --target`; `--no-deps` because pycocoevalcap's declared pycocotools is not used.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

log = logging.getLogger("benchmarks.gpu_wheels")

PINS = ["jsonargparse==4.53.0", "docstring-parser==0.18.0", "typeshed-client==2.15.0", "pycocoevalcap==1.2"]
SLIM = {"pycocoevalcap": (".jar", ".gz")}  # distribution -> suffixes of the files left out of its wheel
LIMIT_MIB = 40.0  # the whole working tree travels in 64 MiB; the wheels keep well under that
# what `pip download` needs to pick wheels for the GPU machine's interpreter (pure-Python wheels match any of them)
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
TARGET += [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]


def record_line(name: str, data: bytes) -> str:
    """A wheel RECORD row: path, urlsafe-base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(wheel: Path, drop: tuple[str, ...]) -> int:
    """Rewrite `wheel` in place without the members whose names end in `drop`; return how many were left out."""
    out = wheel.with_suffix(".slim")
    left_out = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = src.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for name in names:
            if name == record:
                continue
            if name.endswith(drop):
                left_out += 1
                continue
            data = src.read(name)
            dst.writestr(src.getinfo(name), data)
            rows.append(record_line(name, data))
        dst.writestr(record, "\n".join([*rows, f"{record},,"]) + "\n")
    out.replace(wheel)
    return left_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".whl"), help="folder to fill (emptied first)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shutil.rmtree(args.out, ignore_errors=True)  # one version of each: two would stop the install there
    args.out.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", *TARGET]
    subprocess.run([*pip, "--dest", str(args.out), *PINS], check=True)
    for wheel in sorted(args.out.glob("*.whl")):
        dist = wheel.name.split("-")[0].replace("_", "-").lower()
        if dist in SLIM:
            log.info("%s: left out %d files (%s)", wheel.name, slim_wheel(wheel, SLIM[dist]), ", ".join(SLIM[dist]))
    total = 0
    for wheel in sorted(args.out.glob("*.whl")):
        total += wheel.stat().st_size
        log.info("%8.1f KiB  %s", wheel.stat().st_size / 1024, wheel.name)
    log.info("%8.1f KiB  in all, in %s", total / 1024, args.out)
    if total > LIMIT_MIB * 2**20:
        log.error("the wheels take %.1f MiB, over the %.0f MiB this folder may use", total / 2**20, LIMIT_MIB)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
