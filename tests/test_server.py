"""`vision-attn serve`: a real server on a free local port, hit with real HTTP; and its batching in-process."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from queue import Queue
from typing import Any

import pytest
import torch
from PIL import Image
from serving import b64, png, post_form, post_json, request, running_server, save_served_model

from vision_attn import GenerationConfig, Pipeline
from vision_attn.attention_maps import AttentionResult
from vision_attn.cli import build_parser, main
from vision_attn.litserve_ext import IdleWaitBatchedLoop
from vision_attn.server import ATTENTION_DECIMALS, VQA_MIN_BEAMS, CaptionAPI, Item, Limits, Rejected, VqaAPI

MAX_PIXELS, MAX_CHARS, MAX_BODY_MB = 100 * 100, 40, 0.25
QUESTIONS = ["what color is the circle?", "how many objects are there?", "is there a green triangle?", "where?"]
IMAGES = [png(32 + 8 * i, 40 + 4 * i, seed=i) for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_served_model(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vision-attn serve` in a subprocess with small limits and batching on; yields its base URL."""
    args = ["--max-pixels", str(MAX_PIXELS), "--max-question-chars", str(MAX_CHARS), "--max-body-mb", str(MAX_BODY_MB)]
    args += ["--max-batch-size", "8", "--batch-timeout", "0.05", "--threads", "1", "--log-level", "warning"]
    with running_server(model_dir, args, tmp_path_factory.mktemp("serve_log")) as url:
        yield url


def expected_vqa(pipe: Pipeline, image: bytes, question: str, top_k: int | None) -> list[dict]:
    k = top_k or 1
    ranked = pipe.rank_answers(image, question, k, GenerationConfig(num_beams=max(k, VQA_MIN_BEAMS)))
    return [asdict(a) for a in ranked.answers]


def assert_same_answers(got: dict, want: list[dict]) -> None:
    assert got["answer"] == want[0]["answer"]
    assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want]
    assert [a["probability"] for a in got["answers"]] == pytest.approx([a["probability"] for a in want], abs=1e-5)
    assert got["latency_ms"] >= 0


def test_health_and_openapi_list_both_routes(server: str) -> None:
    with urllib.request.urlopen(f"{server}/health") as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{server}/openapi.json") as resp:
        paths = json.loads(resp.read())["paths"]
    for route in ("/v1/vqa", "/v1/caption"):
        assert set(paths[route]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "question" in paths["/v1/vqa"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"]


def test_answers_and_captions_equal_the_pipeline(server: str, pipe: Pipeline) -> None:
    image, question = IMAGES[0], QUESTIONS[0]
    status, got = post_form(f"{server}/v1/vqa", {"image": image, "question": question})
    assert status == 200, got
    assert_same_answers(got, expected_vqa(pipe, image, question, None))
    status, got = post_json(f"{server}/v1/vqa", {"image": b64(image), "question": question, "top_k": 3})
    assert status == 200, got
    assert len(got["answers"]) == 3
    assert_same_answers(got, expected_vqa(pipe, image, question, 3))
    status, got = post_json(f"{server}/v1/caption", {"image": f"data:image/png;base64,{b64(IMAGES[1])}"})
    assert status == 200 and got["caption"] == pipe.caption(IMAGES[1], GenerationConfig(max_new_tokens=48)), got
    status, got = post_form(f"{server}/v1/caption", {"image": IMAGES[2], "num_beams": "2"})
    assert status == 200 and got["caption"] == pipe.caption(
        IMAGES[2], GenerationConfig(num_beams=2, max_new_tokens=48)
    ), got


def expected_maps(pipe: Pipeline, image: bytes, question: str | None, beams: int) -> AttentionResult:
    """What the server's `attention` must hold: Pipeline's maps for the same request."""
    if question is None:
        return pipe.caption_maps(image, GenerationConfig(num_beams=beams, max_new_tokens=48))
    return pipe.answer_maps(image, question, GenerationConfig(num_beams=beams, max_new_tokens=8, length_penalty=0.0))


def assert_same_maps(got: dict, want: AttentionResult) -> None:
    """`got["attention"]` holds `want`'s words, each map and the rollout on its grid, rounded, each summing to ~1."""
    att, (h, w) = got["attention"], want.grid
    assert att["grid"] == [h, w] and att["text"] == want.text and att["layer"] == "mean"
    assert [x["word"] for x in att["words"]] == want.words
    tol = 0.5 * 10**-ATTENTION_DECIMALS + 1e-7  # rounding
    for got_map, want_map in [*zip([x["map"] for x in att["words"]], want.word_maps, strict=True)] + [
        (att["rollout"], want.rollout)
    ]:
        m = torch.tensor(got_map)
        assert m.shape == (h, w)
        assert float(m.sum()) == pytest.approx(1.0, abs=h * w * tol)
        torch.testing.assert_close(m, want_map, atol=tol, rtol=0)


def test_attention_maps_equal_the_pipeline(server: str, pipe: Pipeline) -> None:
    """`return_attention` (JSON true or form "true") adds the maps of the answer; false or left out adds nothing."""
    image, question = IMAGES[4], QUESTIONS[0]
    for top_k, send in [(None, post_form), (3, post_json)]:
        fields = {"image": image if send is post_form else b64(image), "question": question, "return_attention": True}
        if top_k:
            fields["top_k"] = top_k
        if send is post_form:
            fields["return_attention"] = "true"
        status, got = send(f"{server}/v1/vqa", fields)
        assert status == 200, got
        assert_same_answers(got, expected_vqa(pipe, image, question, top_k))
        want = expected_maps(pipe, image, question, max(top_k or 1, VQA_MIN_BEAMS))
        assert want.words and got["attention"]["text"] == got["answer"]  # the maps are the best answer's
        assert_same_maps(got, want)
    status, got = post_json(f"{server}/v1/caption", {"image": b64(IMAGES[5]), "return_attention": True, "num_beams": 2})
    assert status == 200, got
    want = expected_maps(pipe, IMAGES[5], None, 2)
    assert want.words and got["caption"] == want.text == pipe.caption(
        IMAGES[5], GenerationConfig(num_beams=2, max_new_tokens=48)
    )
    assert_same_maps(got, want)
    for route, fields in [("vqa", {"image": image, "question": question}), ("caption", {"image": image})]:
        status, got = post_form(f"{server}/v1/{route}", {**fields, "return_attention": "False"})
        assert status == 200 and "attention" not in got, got


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (101, 100), (200, 30, 30)).save(buf, format="PNG")  # 10,100 pixels, a tiny file
    return buf.getvalue()


VQA, CAPTION = "/v1/vqa", "/v1/caption"
GOOD = {"image": IMAGES[0], "question": QUESTIONS[1]}
BAD_REQUESTS = {  # name: (route, how to send, fields or raw body, expected status, words the error must hold)
    "not an image": (VQA, "form", {**GOOD, "image": b"hello, not a picture"}, 422, "not a recognised image"),
    "truncated image": (VQA, "form", {**GOOD, "image": IMAGES[3][: len(IMAGES[3]) // 2]}, 422, "truncated"),
    "empty question": (VQA, "form", {**GOOD, "question": "   "}, 422, "'question' is empty"),
    "over-long question": (VQA, "json", {"image": b64(IMAGES[0]), "question": "x" * 41}, 422, "over the limit of 40"),
    "body over the limit": (VQA, "json", {"image": b64(b"\0" * 300_000), "question": "hi"}, 413, "over the limit"),
    "image over the pixel limit": (CAPTION, "form", {"image": _big_png()}, 422, "10100 pixels, over the limit"),
    "question not a string": (VQA, "json", {"image": b64(IMAGES[0]), "question": 5}, 422, "must be a string"),
    "image not a string": (VQA, "json", {"image": 12, "question": "hi"}, 422, "'image' must be a file upload"),
    "top_k not an integer": (VQA, "form", {**GOOD, "top_k": "abc"}, 422, "'top_k' must be an integer"),
    "top_k a boolean": (VQA, "json", {"image": b64(IMAGES[0]), "question": "hi", "top_k": True}, 422, "integer"),
    "return_attention not a boolean": (VQA, "form", {**GOOD, "return_attention": "yes"}, 422, "true or false"),
    "return_attention a number": (CAPTION, "json", {"image": b64(IMAGES[0]), "return_attention": 1}, 422, "true or"),
    "top_k out of range": (VQA, "json", {"image": b64(IMAGES[0]), "question": "hi", "top_k": 0}, 422, "between 1"),
    "num_beams out of range": (CAPTION, "form", {"image": IMAGES[0], "num_beams": "99"}, 422, "between 1 and 8"),
    "invalid base64": (CAPTION, "json", {"image": "not base64!"}, 422, "not valid base64"),
    "missing image": (VQA, "json", {"question": "hi"}, 422, "'image' is missing"),
    "missing question": (VQA, "form", {"image": IMAGES[0]}, 422, "'question' is missing"),
    "unknown field": (CAPTION, "json", {"image": b64(IMAGES[0]), "question": "hi"}, 422, "unknown field"),
    "JSON not an object": (VQA, "raw", (b"[1, 2]", "application/json"), 422, "must be an object"),
    "malformed JSON": (VQA, "raw", (b'{"image": ', "application/json"), 400, "not valid JSON"),
    "malformed multipart": (VQA, "raw", (b"garbage", "multipart/form-data; boundary=x"), 400, "multipart"),
    "wrong content type": (CAPTION, "raw", (b"hello", "text/plain"), 415, "Content-Type"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_that_says_what_is_wrong_and_the_server_keeps_serving(
    server: str, pipe: Pipeline, name: str
) -> None:
    route, how, payload, want_status, words = BAD_REQUESTS[name]
    if how == "raw":
        status, got = request(server + route, *payload)
    else:
        status, got = (post_form if how == "form" else post_json)(server + route, payload)
    assert status == want_status, got
    assert set(got) == {"error"} and words in got["error"], got
    status, got = post_form(f"{server}/v1/vqa", GOOD)
    assert status == 200, got
    assert_same_answers(got, expected_vqa(pipe, GOOD["image"], GOOD["question"], None))


def test_unknown_route_error_is_json_too(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}/v1/nope")
    assert e.value.code == 404 and json.loads(e.value.read()) == {"error": "Not Found"}


def test_50_concurrent_requests_each_get_their_own_pipeline_answer(server: str, pipe: Pipeline) -> None:
    """Mixed routes, parameters and encodings, released together so they share batches; bad ones mixed in."""
    jobs = []
    for i in range(50):
        image, question, top_k = IMAGES[i % len(IMAGES)], QUESTIONS[i % len(QUESTIONS)], [None, 2, 4][i % 3]
        if i % 5 == 4:
            jobs.append(("caption", image, None, [None, 2][i % 2], i % 2 == 0))
        else:
            jobs.append(("vqa", image, question, top_k, i % 2 == 0))
    barrier = threading.Barrier(len(jobs) + 5)

    def send(job: tuple) -> tuple[int, Any]:
        route, image, question, param, as_form = job
        fields: dict[str, Any] = {"image": image if as_form else b64(image)}
        if question is not None:
            fields["question"] = question
        if param is not None:
            fields["top_k" if route == "vqa" else "num_beams"] = str(param) if as_form else param
        barrier.wait()
        return (post_form if as_form else post_json)(f"{server}/v1/{route}", fields)

    def send_bad(i: int) -> tuple[int, Any]:
        barrier.wait()
        return post_form(f"{server}/v1/vqa", {"image": IMAGES[i][:50], "question": "what?"})

    with ThreadPoolExecutor(len(jobs) + 5) as pool:
        futures = [pool.submit(send, job) for job in jobs] + [pool.submit(send_bad, i) for i in range(5)]
        results = [f.result(timeout=120) for f in futures]
    for (status, got), (route, image, question, param, _) in zip(results, jobs, strict=False):
        assert status == 200, got
        if route == "vqa":
            assert_same_answers(got, expected_vqa(pipe, image, question, param))
        else:
            assert got["caption"] == pipe.caption(image, GenerationConfig(num_beams=param or 1, max_new_tokens=48))
    assert all(status == 422 for status, _ in results[len(jobs) :])


def test_a_mixed_batch_equals_its_members_alone(model_dir: Path, pipe: Pipeline) -> None:
    """In-process: different top_k in one batch, and a rejected request between them, change no answer."""
    api = VqaAPI(str(model_dir), Limits(), max_batch_size=8)
    api.setup("cpu")
    requests = [
        {"image": b64(IMAGES[i]), "question": QUESTIONS[i % 4], "top_k": [1, 3, 1, 2, 5, 3][i]} for i in range(6)
    ]
    requests.insert(2, {"image": b64(b"junk"), "question": "what?"})
    decoded = [api.decode_request(r) for r in requests]
    assert isinstance(decoded[2], Rejected) and all(isinstance(d, Item) for j, d in enumerate(decoded) if j != 2)
    outputs = [api.encode_response(o) for o in api.predict(decoded)]
    assert outputs[2].status_code == 422
    for req, out in zip(requests, outputs, strict=True):
        if req["image"] != b64(b"junk"):
            want = expected_vqa(pipe, base64.b64decode(req["image"]), req["question"], req["top_k"])
            assert_same_answers(out, want)


def test_a_batch_mixing_attention_and_plain_requests_equals_them_alone(model_dir: Path, pipe: Pipeline) -> None:
    """In-process: `return_attention` and `top_k`/`num_beams` vary within one batch; each answer is Pipeline's."""
    vqa = VqaAPI(str(model_dir), Limits(), max_batch_size=8)
    vqa.setup("cpu")
    combos = [(1, True), (3, False), (1, False), (2, True), (1, True)]
    requests = [
        {"image": b64(IMAGES[i]), "question": QUESTIONS[i % 4], "top_k": k, "return_attention": a}
        for i, (k, a) in enumerate(combos)
    ]
    outputs = [vqa.encode_response(o) for o in vqa.predict([vqa.decode_request(r) for r in requests])]
    for req, out, (top_k, attention) in zip(requests, outputs, combos, strict=True):
        image = base64.b64decode(req["image"])
        assert_same_answers(out, expected_vqa(pipe, image, req["question"], top_k))
        assert ("attention" in out) == attention
        if attention:
            assert_same_maps(out, expected_maps(pipe, image, req["question"], max(top_k, VQA_MIN_BEAMS)))
    cap = CaptionAPI(str(model_dir), Limits(), max_batch_size=8)
    cap.setup("cpu")
    combos = [(1, True), (2, False), (1, False), (2, True)]
    requests = [{"image": b64(IMAGES[i]), "num_beams": b, "return_attention": a} for i, (b, a) in enumerate(combos)]
    outputs = [cap.encode_response(o) for o in cap.predict([cap.decode_request(r) for r in requests])]
    for req, out, (beams, attention) in zip(requests, outputs, combos, strict=True):
        image = base64.b64decode(req["image"])
        assert out["caption"] == pipe.caption(image, GenerationConfig(num_beams=beams, max_new_tokens=48))
        if attention:
            assert_same_maps(out, expected_maps(pipe, image, None, beams))
        else:
            assert "attention" not in out


def test_questions_too_long_for_the_model_are_rejected(model_dir: Path) -> None:
    api = VqaAPI(str(model_dir), Limits(max_question_chars=10_000), max_batch_size=4)
    api.setup("cpu")
    rejected = api.decode_request({"image": b64(IMAGES[0]), "question": "circle " * 60})
    assert isinstance(rejected, Rejected) and "tokens" in rejected.error and "at most 56" in rejected.error
    cap = CaptionAPI(str(model_dir), Limits(), max_batch_size=4)
    cap.setup("cpu")
    assert isinstance(cap.decode_request({"image": b64(IMAGES[0]), "num_beams": 2}), Item)


def test_serve_refuses_a_folder_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "model.safetensors, tokenizer.json missing" in capsys.readouterr().err


def test_serve_binds_to_loopback_by_default() -> None:
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.max_batch_size) == ("127.0.0.1", 8000, 16)


def test_idle_wait_loop_batches_what_is_queued() -> None:
    """The loop that blocks for a batch's first request still hands LitServe's collation the whole queue."""
    api = VqaAPI("unused", Limits(), max_batch_size=4, batch_timeout=0.05)
    api.request_timeout = 30
    queue: Queue = Queue()
    for i in range(6):
        queue.put((0, f"uid{i}", time.monotonic(), {"n": i}))
    loop = IdleWaitBatchedLoop()
    first, timed_out = loop.get_batch_requests(api, queue, transport=None)
    second, _ = loop.get_batch_requests(api, queue, transport=None)
    assert [uid for _, uid, _ in first] == ["uid0", "uid1", "uid2", "uid3"] and not timed_out
    assert [payload["n"] for _, _, payload in second] == [4, 5]
