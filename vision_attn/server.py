"""`vision-attn serve`: the HTTP API for captioning and VQA, with dynamic batching of concurrent requests.

LitServe (FastAPI + uvicorn underneath) owns the HTTP server, the queue in front of the model, the dynamic
batching (`max_batch_size`, `batch_timeout`), the worker processes, `GET /health` and `/openapi.json`.
One bad request must not fail the others of its batch, but LitServe answers every request of a batch with the
error that any one of them raised. So `decode_request` never raises: it returns a `Rejected` for bad input,
`predict` runs the model on the good items only, and `encode_response` turns a `Rejected` into its 4xx.
What else LitServe needed (a body guard, JSON errors, a batch loop that does not poll) is in `litserve_ext.py`.

Requests with different `top_k`, `num_beams` or `return_attention` may share a batch: `predict` groups them by
those values, so a batched answer is always what `Pipeline` gives for the same image and question alone.

With `return_attention`, an answer also holds `attention`: the decoder's cross-attention map of each word of the
text over the patch grid, and the encoder's attention rollout (`attention_json`). On /v1/vqa the maps are those
of the best answer, from the same beam search that ranks the `top_k` answers, so `top_k` may be anything.
GET / is the web page that shows them (`web.py`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
import time
from abc import abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vision_attn.attention_maps import AttentionResult
from vision_attn.config import ModelConfig
from vision_attn.data.errors import ImageLoadError
from vision_attn.data.images import load_image
from vision_attn.data.tokenizer import load_tokenizer
from vision_attn.inference import Pipeline
from vision_attn.litserve_ext import BodyGuard, IdleWaitBatchedLoop, json_error
from vision_attn.tasks import GenerationConfig, Ranking, vqa_prompt
from vision_attn.web import add_web_page

VQA_PATH, CAPTION_PATH = "/v1/vqa", "/v1/caption"
VQA_MIN_BEAMS = 3  # answers come from beam search with max(top_k, 3) beams, so `answer` does not depend on top_k
MAX_TOP_K, MAX_CAPTION_BEAMS = 10, 8
VQA_NEW_TOKENS, CAPTION_NEW_TOKENS = 8, 48
ATTENTION_DECIMALS = 4  # attention weights in JSON: enough to draw a map, a fraction of the size of full floats
_MAIN_PID = [0]  # the process that runs `serve`; set there


@dataclass(frozen=True)
class Limits:
    """What a request may hold; anything over a limit gets a 4xx naming it."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000
    max_question_chars: int = 500


@dataclass
class Rejected:
    """A request that failed validation: answered with `status` and `{"error": error}`, never batched."""

    status: int
    error: str


@dataclass
class Item:
    """A validated request: the decoded image and its parameters (question, top_k or num_beams, return_attention)."""

    image: Image.Image
    params: dict[str, Any]
    start: float  # time.perf_counter() when its decoding began


class _BadField(Exception):
    """Raised while decoding one request; becomes its `Rejected` (422)."""


def _int_field(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # form fields are strings
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadField(f"field '{name}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _BadField(f"field '{name}' must be between {low} and {high}, got {value}")
    return value


def _bool_field(name: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # form fields are strings
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise _BadField(f"field '{name}' must be true or false, got {value!r}")
    return value


def _image_bytes(value: Any) -> bytes:
    """A multipart file upload, or a base64 string (a `data:image/...;base64,` URL too) in JSON."""
    if isinstance(value, UploadFile):
        data = value.file.read()
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
        except (binascii.Error, ValueError):
            raise _BadField("field 'image' is not valid base64 (in a multipart form, send it as a file)") from None
    else:
        raise _BadField(
            f"field 'image' must be a file upload (multipart) or a base64 string (JSON), got {type(value).__name__}"
        )
    if not data:
        raise _BadField("field 'image' is empty")
    return data


class _VisionAttnAPI(ls.LitAPI):
    """One route over a `Pipeline`: validate each request, run the good ones batched, answer each."""

    route_fields: tuple[str, ...] = ("image", "return_attention")

    def __init__(self, model_dir: str, limits: Limits, threads: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.limits, self.threads = model_dir, limits, threads

    def setup(self, device: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.pipe = Pipeline.from_pretrained(self.model_dir, device=device, batch_size=self.max_batch_size)
        self.max_len = self.pipe.model.config.decoder.max_len

    # No annotation on `request`: LitServe then hands over the parsed JSON object or multipart form.
    def decode_request(self, request) -> Item | Rejected:
        start = time.perf_counter()
        try:
            if not hasattr(request, "keys"):
                raise _BadField(f"the JSON body must be an object with the fields {', '.join(self.route_fields)}")
            unknown = sorted(set(request.keys()) - set(self.route_fields))
            if unknown:
                raise _BadField(f"unknown field(s) {unknown}; this route takes {list(self.route_fields)}")
            if request.get("image") is None:
                raise _BadField("field 'image' is missing")
            data = _image_bytes(request["image"])
            params = self.params(request)  # before decoding the image: cheap checks first
            attention = request.get("return_attention")
            params["return_attention"] = attention is not None and _bool_field("return_attention", attention)
            return Item(load_image(data, max_pixels=self.limits.max_pixels), params, start)
        except _BadField as e:
            return Rejected(422, str(e))
        except ImageLoadError as e:
            return Rejected(422, str(e).replace("<bytes>", "field 'image'"))

    @abstractmethod
    def params(self, request: Any) -> dict[str, Any]:
        """The route's own fields, checked; raises `_BadField` naming a wrong one."""

    def predict(self, x: Item | Rejected | list[Item | Rejected]) -> Any:
        items = x if isinstance(x, list) else [x]  # a list when batching is on
        out: list[Any] = list(items)
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(items):
            if isinstance(it, Item):
                groups.setdefault(self.group_key(it), []).append(i)
        for key, idx in groups.items():
            for i, result in zip(idx, self.run(key, [items[i] for i in idx]), strict=True):
                out[i] = (items[i], result)
        return out if isinstance(x, list) else out[0]

    @abstractmethod
    def group_key(self, item: Item) -> Any:
        """What changes the output besides the input (top_k or num_beams, return_attention): equal keys run as one
        model call."""

    @abstractmethod
    def run(self, key: Any, items: list[Item]) -> list[Any]:
        """The model on items that share `key`: one result per item, in order."""

    def encode_response(self, output: tuple[Item, Any] | Rejected) -> Any:
        if isinstance(output, Rejected):
            return JSONResponse({"error": output.error}, status_code=output.status)
        item, result = output
        return {**self.response(result), "latency_ms": round((time.perf_counter() - item.start) * 1000, 2)}

    @abstractmethod
    def response(self, result: Any) -> dict[str, Any]:
        """One result -> the JSON fields of its answer."""


class VqaAPI(_VisionAttnAPI):
    """POST /v1/vqa: `image`, `question`, optional `top_k`, `return_attention` -> answer, ranked answers with
    probabilities, and the best answer's attention maps if asked."""

    route_fields = ("image", "question", "top_k", "return_attention")

    def params(self, request: Any) -> dict[str, Any]:
        q = request.get("question")
        if q is None:
            raise _BadField("field 'question' is missing")
        if not isinstance(q, str):
            raise _BadField(f"field 'question' must be a string, got {type(q).__name__}")
        if not q.strip():
            raise _BadField("field 'question' is empty")
        if len(q) > self.limits.max_question_chars:
            raise _BadField(
                f"field 'question' has {len(q)} characters, over the limit of {self.limits.max_question_chars}"
            )
        n_tokens = len(vqa_prompt(self.pipe.codec, q))
        if n_tokens + VQA_NEW_TOKENS > self.max_len:  # the model could not even start answering it
            raise _BadField(
                f"field 'question' is {n_tokens} tokens with the prompt; this model takes at most "
                f"{self.max_len - VQA_NEW_TOKENS}"
            )
        top_k = request.get("top_k")
        return {"question": q, "top_k": 1 if top_k is None else _int_field("top_k", top_k, 1, MAX_TOP_K)}

    def group_key(self, item: Item) -> tuple[int, bool]:
        return item.params["top_k"], item.params["return_attention"]

    def run(self, key: tuple[int, bool], items: list[Item]) -> list[Any]:
        top_k, attention = key
        images, questions = [it.image for it in items], [it.params["question"] for it in items]
        config = GenerationConfig(max_new_tokens=VQA_NEW_TOKENS, num_beams=max(top_k, VQA_MIN_BEAMS))
        return self.pipe.rank_answers(images, questions, top_k, config, maps="mean" if attention else None)

    def response(self, result: Ranking) -> dict[str, Any]:
        ranked, maps = [asdict(a) for a in result.answers], result.maps
        return {"answer": ranked[0]["answer"], "answers": ranked, **({} if maps is None else attention_json(maps))}


class CaptionAPI(_VisionAttnAPI):
    """POST /v1/caption: `image`, optional `num_beams`, `return_attention` -> caption, and its attention maps if
    asked."""

    route_fields = ("image", "num_beams", "return_attention")

    def params(self, request: Any) -> dict[str, Any]:
        beams = request.get("num_beams")
        return {"num_beams": 1 if beams is None else _int_field("num_beams", beams, 1, MAX_CAPTION_BEAMS)}

    def group_key(self, item: Item) -> tuple[int, bool]:
        return item.params["num_beams"], item.params["return_attention"]

    def run(self, key: tuple[int, bool], items: list[Item]) -> list[Any]:
        beams, attention = key
        new_tokens = min(CAPTION_NEW_TOKENS, self.max_len - 2)  # the caption prompt is <bos> <caption>
        images, config = [it.image for it in items], GenerationConfig(max_new_tokens=new_tokens, num_beams=beams)
        return self.pipe.caption_maps(images, config) if attention else self.pipe.caption(images, config)

    def response(self, result: str | AttentionResult) -> dict[str, Any]:
        if isinstance(result, AttentionResult):
            return {"caption": result.text, **attention_json(result)}
        return {"caption": result}


def attention_json(result: AttentionResult) -> dict[str, Any]:
    """`{"attention": ...}` for an answer: the text the maps are of, the patch grid [h, w], per word its map
    (h rows of w weights; each map sums to 1), the encoder rollout (also [h][w], sums to 1) and the decoder
    layer shown ("mean" of all, or an index). Weights are rounded to `ATTENTION_DECIMALS` decimals."""

    def rounded(m: torch.Tensor) -> list[list[float]]:  # [h, w]
        return [[round(v, ATTENTION_DECIMALS) for v in row] for row in m.tolist()]

    words = [{"word": w, "map": rounded(m)} for w, m in zip(result.words, result.word_maps, strict=True)]
    rollout = rounded(result.rollout)
    return {
        "attention": {
            "text": result.text,
            "grid": list(result.grid),
            "layer": result.layer,
            "words": words,
            "rollout": rollout,
        }
    }


def check_model_dir(model_dir: str | Path) -> ModelConfig:
    """Fail at start-up, not in a worker, if `model_dir` is not a model folder from `vision-attn export`."""
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"--model {d}: no such folder (expected the output of `vision-attn export`)")
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--model {d} is not a vision-attn model folder: {', '.join(missing)} missing")
    try:
        config = ModelConfig.from_dict(json.loads((d / "config.json").read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--model {d}: config.json is not a vision-attn model config ({e})") from e
    load_tokenizer(d / "tokenizer.json")
    return config


def _field_schema(api: _VisionAttnAPI, multipart: bool) -> dict[str, Any]:
    image = {"type": "string", "format": "binary"} if multipart else {"type": "string", "format": "byte"}
    ints = {"top_k": (1, MAX_TOP_K, 1), "num_beams": (1, MAX_CAPTION_BEAMS, 1)}
    props: dict[str, Any] = {"image": image}
    if "question" in api.route_fields:
        props["question"] = {"type": "string", "maxLength": api.limits.max_question_chars}
    for name, (low, high, default) in ints.items():
        if name in api.route_fields:
            props[name] = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    props["return_attention"] = {"type": "boolean", "default": False, "description": "add the attention maps"}
    required = [n for n in ("image", "question") if n in api.route_fields]
    return {"schema": {"type": "object", "properties": props, "required": required}}


def build_server(
    model_dir: str | Path,
    limits: Limits | None = None,
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    workers: int = 1,
    device: str = "auto",
    timeout: float = 60.0,
    threads: int = 0,
) -> ls.LitServer:
    """A LitServer with POST /v1/vqa and /v1/caption on the model in `model_dir`, and the web page at GET /;
    `run()` starts it."""
    config, limits = check_model_dir(model_dir), limits or Limits()
    if not threads:  # share the cores among the model processes: more threads than cores slows torch a lot
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // (2 * workers))
    common: dict[str, Any] = {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout}
    apis = [
        VqaAPI(str(model_dir), limits, threads, api_path=VQA_PATH, **common),
        CaptionAPI(str(model_dir), limits, threads, api_path=CAPTION_PATH, **common),
    ]
    for api in apis:
        if max_batch_size > 1:  # at 1, LitServe's unbatched loop already blocks on its queue
            api.loop = IdleWaitBatchedLoop()
    server = ls.LitServer(
        apis,
        accelerator={"auto": "auto", "cpu": "cpu"}.get(device, "cuda"),
        workers_per_device=workers,
        timeout=timeout,
        middlewares=[(BodyGuard, {"paths": (VQA_PATH, CAPTION_PATH), "max_bytes": limits.max_body_bytes})],
        model_metadata={"image_size": config.encoder.image_size, "max_len": config.decoder.max_len, **vars(limits)},
    )
    server.app.add_exception_handler(HTTPException, json_error)
    add_web_page(server.app)
    docs: dict[str, tuple[_VisionAttnAPI, str]] = {
        VQA_PATH: (apis[0], "Answer a question about an image"),
        CAPTION_PATH: (apis[1], "Caption an image"),
    }
    for route in server.app.routes:  # describe the request bodies LitServe leaves untyped
        if isinstance(route, APIRoute) and route.path in docs:
            api, route.summary = docs[route.path]
            content = {"application/json": _field_schema(api, False), "multipart/form-data": _field_schema(api, True)}
            route.openapi_extra = {"requestBody": {"required": True, "content": content}}
    return server


def serve(server: ls.LitServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run until interrupted (Ctrl-C or SIGTERM); binds to loopback unless told otherwise."""
    _MAIN_PID[0] = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)  # shut the workers down as for Ctrl-C, not orphan them
    server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)


def _interrupt(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID[0]:  # a forked API process inherited this handler: die of the signal as usual
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    raise KeyboardInterrupt
