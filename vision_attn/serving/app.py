"""The FastAPI app of `vision-attn serve`: POST /v1/vqa and /v1/caption, GET /health, the web page, and errors.

A request is read within its limits (`body.py`), checked by its pydantic model (`schemas.py`), its image decoded
in a worker thread, then queued for the model thread (`batcher.py`), which answers it in a batch with others of
the same settings. Every error is `{"error": "..."}` with its status: 400 unreadable body, 408 body too slow,
413 body too large, 415 other content type, 422 a field that is wrong, 503 shutting down, 504 no answer within
`--timeout`. The OpenAPI schema documents each of them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vision_attn.data.errors import ImageLoadError
from vision_attn.inference import Pipeline
from vision_attn.serving.batcher import Batcher, BatcherStopped, RunGroup, WaitTimeout
from vision_attn.serving.body import JSON, MULTIPART, RequestError, read_fields
from vision_attn.serving.model import Route, Settings, max_prompt_tokens, prompt_tokens, run_batch
from vision_attn.serving.options import ServeOptions
from vision_attn.serving.schemas import (
    CaptionAnswer,
    CaptionRequest,
    ErrorAnswer,
    VqaAnswer,
    validate,
    vqa_request_model,
)
from vision_attn.serving.web import add_web_page

log = logging.getLogger(__name__)

VQA_PATH, CAPTION_PATH = "/v1/vqa", "/v1/caption"
ERRORS = {
    400: "the body is not valid JSON or multipart/form-data",
    408: "the body did not arrive within --body-timeout",
    413: "the body is over --max-body-mb",
    415: "the Content-Type is not application/json or multipart/form-data",
    422: "a field is missing, unknown or wrong; the image is not one, or over --max-pixels; the question too long",
    503: "too many connections (--max-connections), or the server is shutting down",
    504: "no answer from the model within --timeout",
}


def build_app(pipe: Pipeline, options: ServeOptions) -> FastAPI:
    """The app over `pipe`; its lifespan starts and stops the model thread."""
    limits = options.limits
    batcher = Batcher(_group_runner(pipe), options.max_batch_size, options.batch_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="vision-attn",
        summary="Image captioning and visual question answering, with the attention maps of each answer.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    vqa_model = vqa_request_model(limits)

    async def answer(request: Request, route: Route, model: type[BaseModel]) -> JSONResponse:
        fields = await read_fields(request, limits.max_body_bytes, options.timeouts.body)
        start = time.perf_counter()
        try:
            req: Any = validate(model, fields)
        except ValueError as e:
            raise RequestError(422, str(e)) from None
        question = getattr(req, "question", None)
        if question is not None and (n := prompt_tokens(pipe, question)) > max_prompt_tokens(pipe):
            raise RequestError(
                422,
                f"field 'question' is {n} tokens with the prompt; this model takes at most {max_prompt_tokens(pipe)}",
            )
        image = await run_in_threadpool(_decode_image, pipe, req.image)
        settings = Settings(
            top_k=getattr(req, "top_k", 1), num_beams=getattr(req, "num_beams", 1), attention=req.return_attention
        )
        try:
            result = await batcher.submit((route, settings), (image, question), options.timeouts.request)
        except WaitTimeout:
            raise RequestError(
                504, f"no answer from the model within {options.timeouts.request:g} s (--timeout)"
            ) from None
        except BatcherStopped:
            raise RequestError(503, "the server is shutting down") from None
        return JSONResponse({**result, "latency_ms": round((time.perf_counter() - start) * 1000, 2)})

    @app.post(
        VQA_PATH,
        summary="Answer a question about an image",
        **_documented(vqa_model, VqaAnswer, {"question": "what color is it?", "top_k": 3}),
    )
    async def vqa(request: Request) -> JSONResponse:
        return await answer(request, "vqa", vqa_model)

    @app.post(CAPTION_PATH, summary="Caption an image", **_documented(CaptionRequest, CaptionAnswer, {"num_beams": 2}))
    async def caption(request: Request) -> JSONResponse:
        return await answer(request, "caption", CaptionRequest)

    @app.get(
        "/health",
        summary="ok once the model is loaded",
        response_class=PlainTextResponse,
        responses={200: {"description": "the server is up", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    add_web_page(app)
    return app


def _group_runner(pipe: Pipeline) -> RunGroup:
    """The batcher's `run_group` over `pipe`: a key (route, settings), and its items (image, question)."""

    def run_group(key: Hashable, items: list[tuple[Image.Image, str | None]]) -> list[dict[str, Any]]:
        route, settings = key  # type: ignore[misc]  # the keys `answer` submits
        questions = [q for _, q in items] if route == "vqa" else None
        return run_batch(pipe, route, settings, [image for image, _ in items], questions)  # type: ignore[arg-type]

    return run_group


def _decode_image(pipe: Pipeline, data: bytes) -> Image.Image:
    """The request's image, decoded as the Pipeline decodes any image (its loader: JPEG draft, the pixel limit)."""
    try:
        return pipe.loader.load(data)
    except ImageLoadError as e:
        raise RequestError(422, str(e).replace("<bytes>", "field 'image'")) from None


def _documented(request: type[BaseModel], answer: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """A model route's OpenAPI: its body as JSON (with a working example) and as a form (the image a file there),
    and every answer."""
    schema = request.model_json_schema()
    form = {**schema, "properties": {**schema["properties"], "image": {"type": "string", "format": "binary"}}}
    example = {"image": _example_image(), **example}
    body = {"required": True, "content": {JSON: {"schema": schema, "example": example}, MULTIPART: {"schema": form}}}
    responses: dict[int | str, dict[str, Any]] = {200: {"model": answer, "description": "the answer"}}
    responses |= {status: {"model": ErrorAnswer, "description": why} for status, why in ERRORS.items()}
    return {"openapi_extra": {"requestBody": body}, "responses": responses, "response_model": None}


def _example_image() -> str:
    """A 16 x 16 red PNG in base64: an image the docs' "Try it out" and schemathesis can send."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    headers = {"Connection": "close"} if exc.close else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404, 405) in the API's error shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error (logged)"}, status_code=500)
