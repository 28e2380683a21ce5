"""Connections that would hold the server: every slow or idle one is closed in time, and over the cap a client is
answered 503, never reset. Loopback only; timeouts of seconds (passed as options) and bounded loops.

The server runs with at most 1,024 open files, so its connection cap is lowered to fit them (1,024 - 128 = 896).
LitServe's server (uvicorn defaults) never closed a connection that had not finished its first request, and
1,100 idle connections under that limit made it reset good requests.
"""

from __future__ import annotations

import http.client
import json
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from serving import IMAGES, serve_model_dir_fixture  # noqa: F401  (fixtures)

from vision_attn.serving.harness import RunningServer, b64, post_json, running_server

HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE = 2.0, 2.0, 1.0
OPEN_FILES, CAP = 1024, 1024 - 128
SLACK = 3.0  # seconds past a timeout that a close may take on a busy machine


@pytest.fixture(scope="module")
def server(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    args = ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)]
    args += ["--keep-alive-timeout", str(KEEP_ALIVE), "--threads", "1", "--log-level", "info"]
    log = tmp_path_factory.mktemp("connections") / "serve.log"
    with running_server(serve_model_dir, args, log, open_files=OPEN_FILES) as running:
        yield running


def address(server: RunningServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Those of `socks` with data or a close to read within `timeout` s (poll: file numbers may pass 1,024)."""
    poller, by_fd = select.poll(), {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def wait_closed(sock: socket.socket, within: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed `sock` (None if it has not within `within`), and what it sent."""
    start, data = time.monotonic(), b""
    while (left := start + within - time.monotonic()) > 0:
        if readable([sock], left):
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                return time.monotonic() - start, data
            if not chunk:
                return time.monotonic() - start, data
            data += chunk
    return None, data


def good_answer(server: RunningServer) -> tuple[int, dict]:
    return post_json(f"{server.url}/v1/caption", {"image": b64(IMAGES[0])})


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server: RunningServer) -> None:
    with socket.create_connection(address(server)) as sock:
        took, _ = wait_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took is not None and took >= HEADER_TIMEOUT - 0.5, took


def test_slowloris_headers_are_cut_off_while_good_requests_are_answered(server: RunningServer) -> None:
    """50 connections each sending a request head a byte every 0.2 s: all closed by the header timeout."""
    socks = [socket.create_connection(address(server)) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"POST /v1/vqa HTTP/1.1\r\nHost: x\r\n")
    answers: list[tuple[int, dict]] = []
    good = threading.Thread(target=lambda: answers.append(good_answer(server)))
    good.start()
    start, open_ = time.monotonic(), set(socks)
    while open_ and time.monotonic() - start < HEADER_TIMEOUT + SLACK:
        for sock in readable(list(open_), 0.2):
            try:
                if not sock.recv(4096):
                    open_.discard(sock)
            except ConnectionError:
                open_.discard(sock)
        for sock in list(open_):
            try:
                sock.send(b"X")  # one more byte of a header line that never ends
            except OSError:
                open_.discard(sock)
    took = time.monotonic() - start
    good.join(30)
    for sock in socks:
        sock.close()
    assert not open_, f"{len(open_)} of 50 slowloris connections still open after {took:.1f} s"
    assert answers and answers[0][0] == 200, answers


def test_a_body_that_does_not_arrive_in_time_gets_408(server: RunningServer) -> None:
    with socket.create_connection(address(server)) as sock:
        head = "POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b'{"image": "')
        start, data = time.monotonic(), b""
        while b"\r\n\r\n" not in data and time.monotonic() - start < BODY_TIMEOUT + SLACK:
            if readable([sock], 0.2):
                data += sock.recv(65536)
            else:
                sock.send(b"A")  # a byte of the body every 0.2 s
        took, rest = wait_closed(sock, SLACK)
    status_line, _, body = (data + rest).partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", data
    assert json.loads(body.split(b"\r\n\r\n", 1)[1]) == {"error": "the body did not arrive within 2 s (--body-timeout)"}
    assert took is not None  # and the connection is closed


def test_an_idle_keep_alive_connection_is_closed(server: RunningServer) -> None:
    conn = http.client.HTTPConnection(*address(server), timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b"ok"
    assert conn.sock is not None
    took, _ = wait_closed(conn.sock, KEEP_ALIVE + SLACK)
    conn.close()
    assert took is not None and took >= KEEP_ALIVE - 0.5, took


def test_1100_idle_connections_get_503s_not_resets_and_the_server_recovers(server: RunningServer) -> None:
    """Under 1,024 open files: the first 896 are held (until the header timeout), the rest answered 503 at once;
    a good request meanwhile gets a 503 too, not a reset; once the idle ones are closed it is answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1400:
        pytest.skip(f"this test needs 1,400 open files, the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1400), hard))
    assert f"--max-connections 1000 lowered to {CAP}" in server.log()
    socks: list[socket.socket] = []
    try:
        for _ in range(1100):
            socks.append(socket.create_connection(address(server), timeout=10))
        status, got = good_answer(server)  # a ConnectionResetError or a timeout here fails the test
        assert status == 503 and "too many open connections" in got["error"], got
        refused = 0
        for sock in socks[CAP:]:
            took, data = wait_closed(sock, HEADER_TIMEOUT + SLACK)
            refused += took is not None and data.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert refused >= 1100 - CAP - 10, refused  # a few may have been held after early ones timed out
        held_closed = [wait_closed(sock, HEADER_TIMEOUT + SLACK)[0] is not None for sock in socks[:CAP]]
        assert all(held_closed), f"{held_closed.count(False)} idle connections still open"
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    status, got = good_answer(server)
    assert status == 200 and "caption" in got, got
