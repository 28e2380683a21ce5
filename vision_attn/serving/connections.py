"""What uvicorn leaves open about connections: a deadline for each request head, and a cap that answers 503.

uvicorn 0.54 times out a connection only while it is idle after a response (`timeout_keep_alive`): its timer is
not running from the moment a connection opens, nor once the first byte of the next request arrives, until
that request is answered. So a client that opens connections and sends nothing, or sends its headers a byte at
a time (slowloris), holds them for ever. Its `limit_concurrency` answers 503 only to a request, after the
connection has been accepted, so idle connections still use up the open files; when those run out the server
can no longer accept, and good requests time out or are reset.

Options weighed: hypercorn's `keep_alive_timeout` does run from a connection's start to its request head, but
hypercorn has no connection cap and parses HTTP in pure Python; raising the open-file limit (done too, at
start-up, by `fit_open_files`) only moves the point where connections run out. So we keep uvicorn and its
httptools parser and wrap its HTTP protocol through its documented `http` setting (any asyncio protocol class):
`ConnectionGuard.protocol_class` counts the open connections, answers a connection over `max_connections` with
a 503 at once, and closes one that has not had a whole request head `header_timeout` seconds after it opened or
after its last answer. `ConnectionGuard.track`, an ASGI middleware, tells each connection when a request is in
the app (head complete) and when it is answered. Slow bodies are `body.py`'s `--body-timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

try:
    import resource
except ImportError:  # not on Windows: the open-file limit is left as it is
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FD_RESERVE = 128  # open files the server needs besides its connections: model files, logs, the event loop, threads


class ConnectionGuard:
    """The open connections of one server: at most `max_connections`, each with a deadline for its request head."""

    def __init__(self, max_connections: int, header_timeout: float, inner: type[asyncio.Protocol] = AutoHTTPProtocol):
        self.max_connections, self.header_timeout, self.inner = max_connections, header_timeout, inner
        self.open: dict[tuple[str, int], GuardedProtocol] = {}  # by client address, as ASGI scopes name them
        error = f"too many open connections (--max-connections {max_connections}); try again shortly"
        body = json.dumps({"error": error}).encode()
        head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        self.refusal = head.encode() + body

    @property
    def protocol_class(self) -> type[asyncio.Protocol]:
        """For uvicorn's `http` setting: its own HTTP protocol, guarded by this object."""
        return type("GuardedHTTPProtocol", (GuardedProtocol,), {"guard": self})

    def track(self, app: ASGIApp) -> ASGIApp:
        """`app`, telling each request's connection when the request starts and when it has been answered."""

        async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
            client = scope.get("client") if scope["type"] == "http" else None
            conn = self.open.get((client[0], client[1])) if client else None
            if conn is None:
                await app(scope, receive, send)
                return
            conn.request_started()
            try:
                await app(scope, receive, send)
            finally:
                conn.request_ended()

        return tracked


class GuardedProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol for one connection, inside the limits of `guard` (set by `protocol_class`)."""

    guard: ConnectionGuard

    def __init__(self, **uvicorn_args: Any) -> None:
        self.inner = self.guard.inner(**uvicorn_args)
        self.transport: asyncio.Transport | None = None
        self.key: tuple[str, int] | None = None  # None: refused, or not yet made
        self.requests = 0  # in the app now
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        peer = transport.get_extra_info("peername")
        if len(self.guard.open) >= self.guard.max_connections or not peer:
            transport.write(self.guard.refusal)
            transport.close()
            return
        self.key = (str(peer[0]), int(peer[1]))
        self.guard.open[self.key] = self
        self.inner.connection_made(transport)
        self._await_request()

    def data_received(self, data: bytes) -> None:
        if self.key is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.key is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is None:
            return
        self._cancel_deadline()
        self.guard.open.pop(self.key, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self) -> None:
        self.requests += 1
        self._cancel_deadline()

    def request_ended(self) -> None:
        self.requests -= 1
        if not self.requests and self.transport is not None and not self.transport.is_closing():
            self._await_request()

    def _await_request(self) -> None:
        self._cancel_deadline()
        self.deadline = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._expire)

    def _expire(self) -> None:
        if self.transport is not None and not self.requests:
            log.debug("%s:%d sent no whole request head within --header-timeout; closing", *(self.key or ("?", 0)))
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


def fit_open_files(max_connections: int) -> int:
    """Raise this process's open-file soft limit to its hard limit; return the connection cap that fits under it
    (`max_connections`, or fewer with a warning)."""
    if resource is None:
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + FD_RESERVE)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, e)
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= max_connections:
        return max_connections
    if soft - FD_RESERVE < 1:
        raise ValueError(f"the open-file limit ({soft}) leaves no room for connections; raise it (ulimit -n)")
    log.warning(
        "--max-connections %d lowered to %d to fit the open-file limit (%d)", max_connections, soft - FD_RESERVE, soft
    )
    return soft - FD_RESERVE
