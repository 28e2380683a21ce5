"""`vision-attn serve` in a subprocess on a free loopback port, and plain-HTTP requests to it: what the tests and
the serving benchmark share.

    with running_server("runs/demo/model", ["--max-batch-size", "8"], Path("serve.log")) as server:
        status, answer = post_json(f"{server.url}/v1/vqa", {"image": b64(png_bytes), "question": "what color?"})

`root` runs the `vision_attn` of another checkout (the benchmark measures an older server that way).
"""

from __future__ import annotations

import base64
import json
import os
import resource
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout this module is in


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit code; SIGKILL (its whole session) if it has not exited within `timeout` s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what this harness started
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    model_dir: str | Path,
    args: list[str],
    log_path: Path,
    root: Path = ROOT,
    open_files: int | None = None,
    start_timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """`vision-attn serve --model model_dir *args` of checkout `root`, its output in `log_path`, with at most
    `open_files` open files if given; yields it once GET /health answers, stops it on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "vision_attn.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:  # a file, not a pipe: a full pipe would block the server
        # cwd=root: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit
        )
        server = RunningServer(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            deadline = time.monotonic() + start_timeout
            while not healthy(server.url):
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer /health within {start_timeout:g} s:\n{server.log()}")
                time.sleep(0.2)
            yield server
        finally:
            server.stop()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def request(url: str, body: bytes, content_type: str | None, timeout: float = 60.0) -> tuple[int, Any]:
    """POST `body`; the status and the answer (parsed if JSON, else text)."""
    req = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _parsed(resp.headers.get_content_type(), resp.read())
    except urllib.error.HTTPError as e:
        return e.code, _parsed(e.headers.get_content_type(), e.read())


def _parsed(content_type: str, data: bytes) -> Any:
    return json.loads(data) if content_type == "application/json" else data.decode(errors="replace")


def post_json(url: str, fields: Any) -> tuple[int, Any]:
    return request(url, json.dumps(fields).encode(), "application/json")


def form_body(fields: dict[str, Any], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: bytes values as files, the rest as text fields."""
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: image/png'
            parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, fields: dict[str, Any]) -> tuple[int, Any]:
    return request(url, *form_body(fields))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` and its descendants, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return total
