"""Reading a request body into its fields, within the limits: 415, 413, 408 and 400 say what is wrong with it.

A JSON body or a multipart form becomes a plain dict of fields (files as bytes) for the request models in
`schemas.py` to validate. The body is read here, not by the framework, so that its size and the time it takes
to arrive are bounded, and JSON is checked for depth before it is parsed.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

JSON, MULTIPART = "application/json", "multipart/form-data"
MAX_JSON_DEPTH = 32  # a request is a flat object; this leaves room for a wrong one to get a 422 naming its field
MAX_JSON_MARKS = 16_384  # brackets, quotes and backslashes: a flat request holds a few, its question at most its length
_JSON_MARKS = re.compile(rb'[][{}"\\]')
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class RequestError(Exception):
    """A request answered with `status` and `{"error": message}`; `close` ends its connection (the body was not
    read to its end)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


async def read_fields(request: Request, max_bytes: int, timeout: float) -> dict[str, Any]:
    """The fields of a JSON object or multipart form body, or a `RequestError` saying why not."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (JSON, MULTIPART):
        got = f"'{media_type}'" if media_type else "none"
        raise RequestError(415, f"Content-Type must be {JSON} or {MULTIPART}, got {got}")
    body = await read_body(request, max_bytes, timeout)
    if media_type == JSON:
        return parse_json(body)
    return await parse_form(request, body, max_bytes)


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The whole body: 413 over `max_bytes`, 408 if it has not all arrived within `timeout` seconds."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= max_bytes:
                    chunks.append(chunk)
                # Over the limit the rest is read and dropped, so that a client still sending (one that does not
                # wait for `100 Continue`) gets the 413 rather than a connection reset under its feet.
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s (--body-timeout)", close=True) from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body", close=True) from None
    if size > max_bytes:
        raise RequestError(413, f"request body is {size} bytes, over the limit of {max_bytes} bytes (--max-body-mb)")
    return b"".join(chunks)


def check_json_shape(body: bytes) -> None:
    """400 unless `body`'s arrays and objects nest at most `MAX_JSON_DEPTH` deep, checked before parsing (a parser
    recurses once per level) in one pass over its brackets, quotes and backslashes."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:  # the usual flat object: nothing to scan
        return
    depth, in_string, escaped_at = 0, False, -1
    for n, mark in enumerate(_JSON_MARKS.finditer(body)):
        if n == MAX_JSON_MARKS:
            raise RequestError(
                400, f"the JSON body has over {MAX_JSON_MARKS} brackets and quotes; a request is one object"
            )
        pos, char = mark.start(), body[mark.start()]
        if pos == escaped_at:
            continue
        if in_string:
            escaped_at = pos + 1 if char == _BACKSLASH else escaped_at
            in_string = char != _QUOTE
        elif char == _QUOTE:
            in_string = True
        else:
            depth += 1 if char in b"[{" else -1
            if depth > MAX_JSON_DEPTH:
                raise RequestError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")


def parse_json(body: bytes) -> Any:
    """The parsed body; 400 if it is not JSON or nests deeper than `MAX_JSON_DEPTH`."""
    check_json_shape(body)
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise RequestError(400, f"the body is not valid JSON ({e})") from None


async def parse_form(request: Request, body: bytes, max_bytes: int) -> dict[str, Any]:
    """A multipart body's fields: files as bytes, the rest as strings; 400 if it does not parse, 422 for a field
    given twice."""
    try:
        form = await Request(request.scope, _replay(body)).form(max_files=8, max_fields=32, max_part_size=max_bytes)
    except (HTTPException, MultiPartException) as e:
        raise RequestError(400, f"the body is not valid {MULTIPART} ({getattr(e, 'detail', e)})") from None
    fields: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if name in fields:
                raise RequestError(422, f"field '{name}' is given more than once")
            fields[name] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return fields


def _replay(body: bytes) -> Receive:
    """An ASGI `receive` that gives `body` (already read) once, for the form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
