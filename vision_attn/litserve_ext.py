"""What `vision-attn serve` adds to LitServe 0.2, and why:

1. LitServe answers a body that is not JSON (or not valid multipart) with a 500, and its own size limit raises
   inside the body reader, which also comes out as a 500. `BodyGuard` answers those with 400/413/415.
2. FastAPI's errors are `{"detail": ...}`; `json_error` makes every error `{"error": "..."}`, as the routes do.
3. LitServe's batched loop asks its request queue for work every millisecond, idle or not: about a fifth of a
   core per idle server, measured with `top`. `IdleWaitBatchedLoop` blocks for a batch's first request instead.
"""

from __future__ import annotations

import json
from queue import Empty, Queue
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse
from litserve.loops import BatchedLoop
from litserve.loops.base import collate_requests
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class IdleWaitBatchedLoop(BatchedLoop):
    """LitServe's batched loop, but blocking (up to 1 s at a time) for a batch's first request, not polling."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Queue, transport: Any) -> tuple[list, list]:
        try:
            first = request_queue.get(timeout=1.0)
        except Empty:
            return [], []
        # LitServe collects the rest of the batch (up to batch_timeout) and handles timeouts and shutdown as usual.
        return collate_requests(self, lit_api, _Prepended(first, request_queue), transport)


class _Prepended:
    """The request queue with one request put back in front (only `get` and `get_nowait`, all LitServe uses)."""

    def __init__(self, first: Any, queue: Queue) -> None:
        self.first, self.queue = [first], queue

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.first.pop() if self.first else self.queue.get(block, timeout)

    def get_nowait(self) -> Any:
        return self.get(block=False)


class BodyGuard:
    """ASGI middleware for the model routes: 415 unless JSON or multipart, 413 over `max_bytes`, 400 if unparseable.

    The body is read here (at most `max_bytes` kept), parsed, and replayed to LitServe, which parses it again.
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...], max_bytes: int) -> None:
        self.app, self.paths, self.max_bytes = app, paths, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        body, status, error = await self._read(scope, receive)
        if error:
            await JSONResponse({"error": error}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes, int, str]:
        """The body, or an HTTP status and the error that says what is wrong with it."""
        ctype = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            got = f"'{ctype}'" if ctype else "none"
            return b"", 415, f"Content-Type must be application/json or multipart/form-data, got {got}"
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", 400, "the client disconnected before sending the whole body"
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            if size <= self.max_bytes:
                chunks.append(chunk)
            # Over the limit the rest is read and dropped, so that a client that does not wait for
            # `100 Continue` gets the 413 instead of a reset connection.
        if size > self.max_bytes:
            return b"", 413, f"request body is {size} bytes, over the limit of {self.max_bytes} bytes (--max-body-mb)"
        body = b"".join(chunks)
        if ctype == "application/json":
            try:
                json.loads(body)
            except ValueError as e:
                return b"", 400, f"the body is not valid JSON ({e})"
        else:  # starlette's multipart error escapes LitServe as a 500, so parse once here to catch it
            try:
                await (await Request(scope, _replay(body, receive)).form()).close()
            except (HTTPException, MultiPartException) as e:
                return b"", 400, f"the body is not valid multipart/form-data ({getattr(e, 'detail', e)})"
        return body, 200, ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """An ASGI `receive` that gives `body` once, then whatever the connection sends (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def json_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
