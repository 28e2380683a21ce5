"""The requests and answers of the HTTP API as pydantic models: the validation, its errors and the OpenAPI schema.

A request's fields come from a JSON object or a multipart form (`body.py`); the same model checks both. Form
fields arrive as text, so the integer and boolean fields also take their decimal or true/false spelling (the
numbers' ASCII digits only). Every failed check becomes a 422 whose message names the field (`describe`).
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic import create_model as pydantic_model

from vision_attn.serving.model import MAX_CAPTION_BEAMS, MAX_TOP_K
from vision_attn.serving.options import Limits

_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


def _integer(value: Any) -> Any:
    """A form's "3" -> 3; anything else is left for the strict integer check."""
    return int(value) if isinstance(value, str) and _INTEGER.fullmatch(value) else value


def _flag(value: Any) -> Any:
    """A form's "true"/"false" (any case) -> a bool; anything else is left for the strict boolean check."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _image_bytes(value: Any) -> Any:
    """A multipart file's bytes as they are; a base64 string (a `data:image/...;base64,` URL too) decoded."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a file upload (multipart) or a base64 string (JSON), got {type(value).__name__}")
    try:
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (in a multipart form, send it as a file)") from None


ImageField = Annotated[
    bytes,
    BeforeValidator(_image_bytes),
    Field(min_length=1, description="the image file: a multipart file, or base64 (a data: URL too) in JSON"),
    WithJsonSchema({"type": "string", "format": "byte", "minLength": 1}),  # JSON's spelling; multipart: `binary`
]
Flag = Annotated[bool, Field(description="add the attention maps of the answer"), BeforeValidator(_flag)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: ImageField
    return_attention: Flag = False


class CaptionRequest(_Request):
    """POST /v1/caption: an image to caption."""

    num_beams: Annotated[
        int, Field(ge=1, le=MAX_CAPTION_BEAMS, description="beam search width"), BeforeValidator(_integer)
    ] = 1


def vqa_request_model(limits: Limits) -> type[_Request]:
    """The model of POST /v1/vqa (a question about an image), its question at most `limits.max_question_chars`."""
    question = Annotated[
        str, Field(min_length=1, max_length=limits.max_question_chars, pattern=r"\S", description="not only spaces")
    ]
    top_k = Annotated[
        int, Field(ge=1, le=MAX_TOP_K, description="how many ranked answers to give"), BeforeValidator(_integer)
    ]
    doc = "POST /v1/vqa: a question about an image."
    return pydantic_model("VqaRequest", __base__=_Request, __doc__=doc, question=(question, ...), top_k=(top_k, 1))


class RankedAnswer(BaseModel):
    answer: str
    probability: float = Field(ge=0, le=1)


class WordMap(BaseModel):
    word: str
    map: list[list[float]] = Field(description="h rows of w weights over the patch grid, summing to 1")


class Attention(BaseModel):
    """The maps of an answer's text: per word the decoder's cross-attention, and the encoder's rollout."""

    text: str
    grid: list[int] = Field(min_length=2, max_length=2, description="[h, w] patches")
    layer: str | int = Field(description='the decoder layer shown: "mean" of all, or an index')
    words: list[WordMap]
    rollout: list[list[float]] = Field(description="h rows of w weights, summing to 1")


class VqaAnswer(BaseModel):
    answer: str
    answers: list[RankedAnswer] = Field(description="the top_k best answers, most likely first")
    attention: Attention | None = Field(None, description="with return_attention: the best answer's maps")
    latency_ms: float = Field(description="from the whole request in hand to its answer: decoding, queue, model")


class CaptionAnswer(BaseModel):
    caption: str
    attention: Attention | None = Field(None, description="with return_attention: the caption's maps")
    latency_ms: float = Field(description="from the whole request in hand to its answer: decoding, queue, model")


class ErrorAnswer(BaseModel):
    error: str = Field(description="what is wrong, naming the field or the limit")


def validate(model: type[BaseModel], fields: Any) -> Any:
    """`model` checked from a request's fields; a `ValueError` with the first problem, said for a person."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise ValueError(describe(model, e.errors()[0])) from None


def describe(model: type[BaseModel], error: Any) -> str:
    """One pydantic error as a sentence naming the field."""
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx", {})
    if not loc:  # the body itself
        return f"the JSON body must be an object with the fields {', '.join(model.model_fields)}"
    name = str(loc[0])
    field = f"field '{name}'"
    if kind == "missing":
        return f"{field} is missing"
    if kind == "extra_forbidden":
        return f"unknown field '{name}'; this route takes {', '.join(model.model_fields)}"
    if kind == "value_error":
        return f"{field} {ctx['error']}"
    if kind == "string_unicode":  # JSON's "\ud800": a string Python can hold but no tokenizer can read
        return f"{field} is not valid Unicode text (it holds a lone surrogate)"
    if kind in ("string_too_short", "too_short", "string_pattern_mismatch"):
        return f"{field} is empty"
    if kind == "string_too_long":
        return f"{field} has {len(value)} characters, over the limit of {ctx['max_length']}"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(model, name)
        return f"{field} must be between {low} and {high}, got {value}"
    expected = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a string"}.get(kind)
    if expected:
        got = repr(value) if isinstance(value, str | int | float) else _json_type(value)
        return f"{field} must be {expected}, got {got}"
    return f"{field}: {error['msg']}"


@cache
def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    schema = model.model_json_schema()["properties"][name]
    return schema.get("minimum"), schema.get("maximum")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", bytes: "a file", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")
