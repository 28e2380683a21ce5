"""Helpers for the tests that run `vision-attn serve` (test_server.py, test_web.py): a tiny served model, the
server in a subprocess on a free port, and HTTP requests with the standard library."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_tiny_model, tiny_config
from PIL import Image

from vision_attn.data.tokenizer import save_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "what color is the circle?",
    "how many objects are there?",
    "a small red square on the left and a large blue circle at the top.",
    "is there a green triangle?",
    "red",
    "blue",
    "three",
    "yes",
] * 4


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def save_served_model(out: Path) -> Path:
    """A tiny model with varied, image-dependent outputs (seeded O(1) weights) and a real tokenizer, in `out`."""
    tok = train_tokenizer(TEXTS, vocab_size=120)
    build_tiny_model(tiny_config(vocab_size=len(tok), max_len=64)).save_pretrained(out)
    save_tokenizer(tok, out / "tokenizer.json")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, args: list[str], log_dir: Path) -> Iterator[str]:
    """`vision-attn serve --model model_dir *args` in a subprocess on a free port; yields its base URL once healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "vision_attn.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log_path = log_dir / "stderr.txt"
    log = log_path.open("w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, env=env, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become healthy within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its worker processes down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
            proc.wait()
        log.close()


def request(url: str, body: bytes, content_type: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_json(url: str, fields: dict[str, Any]) -> tuple[int, Any]:
    return request(url, json.dumps(fields).encode(), "application/json")


def post_form(url: str, fields: dict[str, Any]) -> tuple[int, Any]:
    """multipart/form-data: bytes values are sent as files, the rest as text fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: image/png'
            parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return request(url, b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
