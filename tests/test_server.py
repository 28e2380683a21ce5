"""`vision-attn serve` over real HTTP: answers equal the Pipeline's, batched or not; every bad input is a 4xx naming
what is wrong, and never fails the requests batched with it."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from PIL import Image
from serving import (
    IMAGES,
    QUESTIONS,
    assert_same_answers,
    assert_same_maps,
    expected_caption,
    expected_maps,
    expected_vqa,
    serve_model_dir_fixture,  # noqa: F401  (fixtures)
    serve_pipe_fixture,  # noqa: F401
    served_fixture,  # noqa: F401
)

from vision_attn import Pipeline
from vision_attn.serving.harness import (
    RunningServer,
    b64,
    form_body,
    post_form,
    post_json,
    process_cpu_seconds,
    request,
)
from vision_attn.serving.model import VQA_MIN_BEAMS

VQA, CAPTION = "/v1/vqa", "/v1/caption"


@pytest.fixture(scope="module")
def server(served: RunningServer) -> str:
    return served.url


def test_a_photo_is_decoded_as_the_pipeline_decodes_it(serve_pipe: Pipeline) -> None:
    """The server decodes a request's image with the Pipeline's own loader: a 640x480 JPEG at libjpeg's reduced
    scale (320x240 for this 32-px model), giving the model the very pixels `Pipeline.caption(bytes)` gives it
    (before, the server decoded it whole)."""
    from vision_attn.serving.app import _decode_image

    buf = io.BytesIO()
    photo = Image.new("RGB", (640, 480))
    photo.putdata([(x * 255 // 639, y * 255 // 479, 90) for y in range(480) for x in range(640)])
    photo.save(buf, format="JPEG", quality=90)
    decoded = _decode_image(serve_pipe, buf.getvalue())
    assert decoded.size == (320, 240)
    assert torch.equal(serve_pipe.preprocess(decoded), serve_pipe.preprocess(buf.getvalue()))


def test_health_is_text_and_openapi_documents_both_routes(server: str) -> None:
    with urllib.request.urlopen(f"{server}/health") as resp:
        assert resp.status == 200 and resp.read() == b"ok"
        assert resp.headers.get_content_type() == "text/plain"
    with urllib.request.urlopen(f"{server}/openapi.json") as resp:
        paths = json.loads(resp.read())["paths"]
    for route in (VQA, CAPTION):
        assert set(paths[route]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "question" in paths[VQA]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"]
    with urllib.request.urlopen(f"{server}/docs") as resp:
        assert resp.status == 200 and b"openapi.json" in resp.read()


def test_answers_and_captions_equal_the_pipeline(server: str, serve_pipe: Pipeline) -> None:
    image, question = IMAGES[0], QUESTIONS[0]
    status, got = post_form(f"{server}{VQA}", {"image": image, "question": question})
    assert status == 200, got
    assert_same_answers(got, expected_vqa(serve_pipe, image, question, None))
    status, got = post_json(f"{server}{VQA}", {"image": b64(image), "question": question, "top_k": 3})
    assert status == 200, got
    assert len(got["answers"]) == 3
    assert_same_answers(got, expected_vqa(serve_pipe, image, question, 3))
    status, got = post_json(f"{server}{CAPTION}", {"image": f"data:image/png;base64,{b64(IMAGES[1])}"})
    assert status == 200 and got["caption"] == expected_caption(serve_pipe, IMAGES[1], None), got
    status, got = post_form(f"{server}{CAPTION}", {"image": IMAGES[2], "num_beams": "2"})
    assert status == 200 and got["caption"] == expected_caption(serve_pipe, IMAGES[2], 2), got


def test_attention_maps_equal_the_pipeline(server: str, serve_pipe: Pipeline) -> None:
    """`return_attention` (JSON true or form "true") adds the maps of the answer; false or left out adds nothing."""
    image, question = IMAGES[4], QUESTIONS[0]
    for top_k, send in [(None, post_form), (3, post_json)]:
        fields = {"image": image if send is post_form else b64(image), "question": question, "return_attention": True}
        if top_k:
            fields["top_k"] = top_k
        if send is post_form:
            fields["return_attention"] = "true"
        status, got = send(f"{server}{VQA}", fields)
        assert status == 200, got
        assert_same_answers(got, expected_vqa(serve_pipe, image, question, top_k))
        want = expected_maps(serve_pipe, image, question, max(top_k or 1, VQA_MIN_BEAMS))
        assert want.words and got["attention"]["text"] == got["answer"]  # the maps are the best answer's
        assert_same_maps(got, want)
    status, got = post_json(f"{server}{CAPTION}", {"image": b64(IMAGES[5]), "return_attention": True, "num_beams": 2})
    assert status == 200, got
    want = expected_maps(serve_pipe, IMAGES[5], None, 2)
    assert want.words and got["caption"] == want.text == expected_caption(serve_pipe, IMAGES[5], 2)
    assert_same_maps(got, want)
    for route, fields in [(VQA, {"image": image, "question": question}), (CAPTION, {"image": image})]:
        status, got = post_form(f"{server}{route}", {**fields, "return_attention": "False"})
        assert status == 200 and "attention" not in got, got


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (101, 100), (200, 30, 30)).save(buf, format="PNG")  # 10,100 pixels, a tiny file
    return buf.getvalue()


def _json(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "image": b64(fields["image"])}


GOOD = {"image": IMAGES[0], "question": QUESTIONS[1]}
TWICE = form_body(GOOD, boundary="b0")[0].replace(  # the question twice
    b"--b0--", b'--b0\r\nContent-Disposition: form-data; name="question"\r\n\r\nagain\r\n--b0--'
)
BAD_REQUESTS = {  # name: (route, how to send, fields or raw body, expected status, words the error must hold)
    "not an image": (VQA, "form", {**GOOD, "image": b"hello, not a picture"}, 422, "not a recognised image"),
    "truncated image": (VQA, "form", {**GOOD, "image": IMAGES[3][: len(IMAGES[3]) // 2]}, 422, "truncated"),
    "empty image": (CAPTION, "json", {"image": ""}, 422, "'image' is empty"),
    "empty question": (VQA, "form", {**GOOD, "question": "   "}, 422, "'question' is empty"),
    "over-long question": (VQA, "json", _json({**GOOD, "question": "x" * 41}), 422, "over the limit of 40"),
    # 40 characters but 160 byte-level tokens: the tiny model (max_len 64) cannot even start answering
    "question too long for the model": (VQA, "json", _json({**GOOD, "question": "🙂" * 40}), 422, "tokens"),
    "question a lone surrogate": (
        VQA,
        "raw",
        (b'{"image": "aGk=", "question": "\\ud800"}', "application/json"),
        422,
        "'question' is not valid Unicode",
    ),  # fmt: skip
    "body over the limit": (VQA, "json", {"image": b64(b"\0" * 300_000), "question": "hi"}, 413, "over the limit"),
    "image over the pixel limit": (CAPTION, "form", {"image": _big_png()}, 422, "10100 pixels, over the limit"),
    "question not a string": (VQA, "json", _json({**GOOD, "question": 5}), 422, "must be a string"),
    "image not a string": (VQA, "json", {"image": 12, "question": "hi"}, 422, "'image' must be a file upload"),
    "top_k not an integer": (VQA, "form", {**GOOD, "top_k": "abc"}, 422, "'top_k' must be an integer"),
    "top_k --3": (VQA, "json", _json({**GOOD, "top_k": "--3"}), 422, "'top_k' must be an integer, got '--3'"),
    "top_k a superscript digit": (VQA, "form", {**GOOD, "top_k": "²"}, 422, "'top_k' must be an integer"),
    "num_beams a superscript digit": (
        CAPTION,
        "json",
        _json({"image": IMAGES[0], "num_beams": "²"}),
        422,
        "'num_beams' must be an integer",
    ),  # fmt: skip
    "top_k a boolean": (VQA, "json", _json({**GOOD, "top_k": True}), 422, "integer"),
    "return_attention not a boolean": (VQA, "form", {**GOOD, "return_attention": "yes"}, 422, "true or false"),
    "return_attention a number": (CAPTION, "json", _json({"image": IMAGES[0], "return_attention": 1}), 422, "true or"),
    "top_k out of range": (VQA, "json", _json({**GOOD, "top_k": 0}), 422, "between 1 and 10"),
    "num_beams out of range": (CAPTION, "form", {"image": IMAGES[0], "num_beams": "99"}, 422, "between 1 and 8"),
    "invalid base64": (CAPTION, "json", {"image": "not base64!"}, 422, "not valid base64"),
    "missing image": (VQA, "json", {"question": "hi"}, 422, "'image' is missing"),
    "missing question": (VQA, "form", {"image": IMAGES[0]}, 422, "'question' is missing"),
    "unknown field": (CAPTION, "json", _json({"image": IMAGES[0], "question": "hi"}), 422, "unknown field 'question'"),
    "field given twice": (VQA, "raw", (TWICE, "multipart/form-data; boundary=b0"), 422, "'question' is given more"),
    "JSON not an object": (VQA, "raw", (b"[1, 2]", "application/json"), 422, "must be an object"),
    "malformed JSON": (VQA, "raw", (b'{"image": ', "application/json"), 400, "not valid JSON"),
    "JSON not UTF-8": (VQA, "raw", (b'{"question": "\xff"}', "application/json"), 400, "not valid JSON"),
    "JSON nested 100,000 deep": (VQA, "raw", (b"[" * 100_000, "application/json"), 400, "nests deeper than 32"),
    "malformed multipart": (VQA, "raw", (b"garbage", "multipart/form-data; boundary=x"), 400, "multipart"),
    "wrong content type": (CAPTION, "raw", (b"hello", "text/plain"), 415, "Content-Type"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_that_says_what_is_wrong_and_the_server_keeps_serving(
    server: str,
    serve_pipe: Pipeline,
    name: str,
) -> None:
    route, how, payload, want_status, words = BAD_REQUESTS[name]
    if how == "raw":
        status, got = request(server + route, *payload)
    else:
        status, got = (post_form if how == "form" else post_json)(server + route, payload)
    assert status == want_status, got
    assert set(got) == {"error"} and words in got["error"], got
    status, got = post_form(f"{server}{VQA}", GOOD)
    assert status == 200, got
    assert_same_answers(got, expected_vqa(serve_pipe, GOOD["image"], GOOD["question"], None))


def test_content_types_match_whatever_their_case(server: str, serve_pipe: Pipeline) -> None:
    body, content_type = form_body(GOOD)
    status, got = request(f"{server}{VQA}", body, content_type.replace("multipart/form-data", "Multipart/Form-Data"))
    assert status == 200, got
    assert_same_answers(got, expected_vqa(serve_pipe, GOOD["image"], GOOD["question"], None))
    status, got = request(f"{server}{VQA}", json.dumps(_json(GOOD)).encode(), "Application/JSON; charset=UTF-8")
    assert status == 200, got


def test_unknown_route_and_method_errors_are_json_too(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}/v1/nope")
    assert e.value.code == 404 and json.loads(e.value.read()) == {"error": "Not Found"}
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}{VQA}")
    assert e.value.code == 405 and e.value.headers["allow"] == "POST"
    assert json.loads(e.value.read()) == {"error": "Method Not Allowed"}


BATCH_BREAKERS = {  # each raised inside LitServe's request decoding: a 500 for it and for every request in its batch
    "top_k --3": (VQA, {"top_k": "--3"}),
    "top_k ²": (VQA, {"top_k": "²"}),
    "num_beams ²": (CAPTION, {"num_beams": "²"}),
    "question a lone surrogate": (VQA, {"question": "\ud800"}),
}


@pytest.mark.parametrize("name", list(BATCH_BREAKERS))
def test_a_bad_field_fails_its_own_request_only(served: RunningServer, serve_pipe: Pipeline, name: str) -> None:
    """8 good JSON requests released together with one bad one (so they share a batch): the bad one gets its 422,
    the good ones their lone answers."""
    route, bad_fields = BATCH_BREAKERS[name]
    good = [{"image": b64(IMAGES[i % 6]), "question": QUESTIONS[i % 4], "top_k": 1 + i % 3} for i in range(8)]
    bad = {"image": b64(IMAGES[0]), **({"question": "what?"} if route == VQA else {}), **bad_fields}
    bodies = [(VQA, fields) for fields in good] + [(route, bad)]
    barrier = threading.Barrier(len(bodies))

    def send(job: tuple[str, dict]) -> tuple[int, Any]:
        path, fields = job
        body = json.dumps(fields).encode()  # json.dumps writes "\ud800" as the escape it is
        barrier.wait()
        return request(served.url + path, body, "application/json")

    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(send, bodies))
    status, got = results[-1]
    assert status == 422 and set(got) == {"error"} and f"field '{next(iter(bad_fields))}'" in got["error"], got
    for i, ((status, got), fields) in enumerate(zip(results, good, strict=False)):
        assert status == 200, got
        assert_same_answers(got, expected_vqa(serve_pipe, IMAGES[i % 6], fields["question"], fields["top_k"]))


def test_50_concurrent_requests_each_get_their_own_pipeline_answer(server: str, serve_pipe: Pipeline) -> None:
    """Mixed routes, parameters and encodings, released together so they share batches; bad ones mixed in."""
    jobs = []
    for i in range(50):
        image, question, param = IMAGES[i % len(IMAGES)], QUESTIONS[i % len(QUESTIONS)], [None, 2, 4][i % 3]
        if i % 5 == 4:
            jobs.append((CAPTION, image, None, [None, 2][i % 2], i % 2 == 0))
        else:
            jobs.append((VQA, image, question, param, i % 2 == 0))
    barrier = threading.Barrier(len(jobs) + 5)

    def send(job: tuple) -> tuple[int, Any]:
        route, image, question, param, as_form = job
        fields: dict[str, Any] = {"image": image if as_form else b64(image)}
        if question is not None:
            fields["question"] = question
        if param is not None:
            fields["top_k" if route == VQA else "num_beams"] = str(param) if as_form else param
        barrier.wait()
        return (post_form if as_form else post_json)(f"{server}{route}", fields)

    def send_bad(i: int) -> tuple[int, Any]:
        barrier.wait()
        return post_form(f"{server}{VQA}", {"image": IMAGES[i][:50], "question": "what?"})

    with ThreadPoolExecutor(len(jobs) + 5) as pool:
        futures = [pool.submit(send, job) for job in jobs] + [pool.submit(send_bad, i) for i in range(5)]
        results = [f.result(timeout=120) for f in futures]
    for (status, got), (route, image, question, param, _) in zip(results, jobs, strict=False):
        assert status == 200, got
        if route == VQA:
            assert_same_answers(got, expected_vqa(serve_pipe, image, question, param))
        else:
            assert got["caption"] == expected_caption(serve_pipe, image, param)
    assert all(status == 422 for status, _ in results[len(jobs) :])


def test_an_idle_server_uses_no_cpu(served: RunningServer) -> None:
    """The model thread blocks on its queue (LitServe's loop polled it: about a fifth of a core)."""
    time.sleep(1.0)  # let anything left from earlier requests finish
    before = process_cpu_seconds(served.process.pid)
    time.sleep(3.0)
    used = process_cpu_seconds(served.process.pid) - before
    assert used < 0.06, f"{used:.3f} s of CPU in 3 s idle"  # uvicorn's own tick (10 a second) is ~1 ms/s


def test_the_server_logs_its_torch_threads(served: RunningServer) -> None:
    assert "1 torch threads" in served.log()  # --threads 1


def test_the_vqa_route_with_maps_runs_one_beam_search(serve_pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of /v1/vqa requests with return_attention is one search: its ranked answers and the best answer's
    maps come from it (the LitServe server ran a second beam search for the maps)."""
    import vision_attn.tasks as tasks_module
    from vision_attn.serving.model import Settings, run_batch

    searches = {"n": 0}
    real = tasks_module.beam_search

    def counting(*args: Any, **kwargs: Any) -> Any:
        searches["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks_module, "beam_search", counting)
    images, questions = [Image.open(io.BytesIO(IMAGES[i])) for i in range(3)], ["what color?", "how many?", "x"]
    answers = run_batch(serve_pipe, "vqa", Settings(top_k=2, attention=True), images, questions)
    assert searches["n"] == 1
    for a, image, q in zip(answers, IMAGES[:3], questions, strict=True):
        assert a["answer"] == a["attention"]["text"] == expected_vqa(serve_pipe, image, q, 2)[0]["answer"]
