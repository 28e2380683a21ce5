"""Starting and stopping `vision-attn serve`: a bad model folder or setting is one line and exit code 2 before
anything binds; its defaults; a request waiting past --timeout gets 504; SIGTERM shuts it down cleanly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serving import IMAGES, serve_model_dir_fixture  # noqa: F401  (fixtures)

import vision_attn.serving
from vision_attn.cli import build_parser, main
from vision_attn.serving.harness import b64, post_json, running_server
from vision_attn.serving.options import ServeOptions, available_cores


@pytest.fixture
def refuse_to_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`serve` fails the test instead of serving (and hanging) if it gets past its checks; the test leaves torch's
    thread count as it found it (other tests compare batched and lone results exactly)."""

    def run(server: object) -> None:
        pytest.fail("the server was started")

    monkeypatch.setattr(vision_attn.serving, "run", run)
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "a refused start changed torch's thread count"


def serve_error(model: Path, capsys: pytest.CaptureFixture, *args: str) -> str:
    """`vision-attn serve --model model *args`: it must exit with 2; its one line of stderr."""
    assert main(["serve", "--model", str(model), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.usefixtures("refuse_to_run")
def test_a_missing_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "no such model folder" in serve_error(tmp_path / "nope", capsys)
    (tmp_path / "config.json").write_text("{}")
    assert "model.safetensors, tokenizer.json missing" in serve_error(tmp_path, capsys)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def without_encoder(path: Path) -> None:
    path.write_text(path.read_text().replace('"encoder"', '"encoder_"'))


DAMAGED = {  # name: (file, how it is damaged, what the error line says)
    "malformed config": (
        "config.json",
        lambda p: p.write_text('{"encoder": {"dim": 32,'),
        "config.json: not a readable JSON file",
    ),
    "config without a key": ("config.json", without_encoder, "config.json: missing key 'encoder'"),
    "truncated weights": ("model.safetensors", truncate, "model.safetensors: not the weights of this model"),
    "invalid tokenizer": (
        "tokenizer.json",
        lambda p: p.write_text('{"version": "1.0", "model": {"type": "nonsense"}}'),
        "tokenizer.json: not a valid tokenizer.json",
    ),
}


@pytest.mark.usefixtures("refuse_to_run")
@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_model_folder_is_one_line(
    serve_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    file, damage, words = DAMAGED[name]
    model = copy_model(serve_model_dir, tmp_path / "m")
    damage(model / file)
    assert words in serve_error(model, capsys)


@pytest.mark.usefixtures("refuse_to_run")
def test_a_bad_setting_is_one_line(serve_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--max-batch-size must be positive" in serve_error(serve_model_dir, capsys, "--max-batch-size", "0")
    assert "--header-timeout must be positive" in serve_error(serve_model_dir, capsys, "--header-timeout", "-1")


def test_serve_binds_to_loopback_and_uses_every_core_by_default() -> None:
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.max_batch_size, args.threads) == ("127.0.0.1", 8000, 16, 0)
    assert ServeOptions().torch_threads == available_cores()
    assert ServeOptions(threads=3).torch_threads == 3


def test_a_request_waiting_past_the_timeout_gets_504_and_sigterm_stops_the_server_cleanly(
    serve_model_dir: Path, tmp_path: Path
) -> None:
    # The model thread waits 10 ms (--batch-timeout) for a batch to fill: an answer within 1 ms is impossible.
    args = ["--timeout", "0.001", "--batch-timeout", "0.01", "--threads", "1", "--log-level", "info"]
    with running_server(serve_model_dir, args, tmp_path / "serve.log") as server:
        status, got = post_json(f"{server.url}/v1/caption", {"image": b64(IMAGES[0])})
        assert status == 504 and got == {"error": "no answer from the model within 0.001 s (--timeout)"}
        assert server.stop(timeout=20) == 0  # SIGTERM: a graceful shutdown and a normal exit
    log = server.log()
    assert "Finished server process" in log and "model thread stopped" in log and "Traceback" not in log, log
