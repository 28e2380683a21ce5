"""The OpenAPI schema of `vision-attn serve` is complete (every answer documented), and schemathesis, generating
requests from it with every check on, finds nothing wrong with the running server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from serving import serve_model_dir_fixture, served_fixture  # noqa: F401  (fixtures)

from vision_attn.serving.harness import RunningServer

ROUTES = {"/v1/vqa": "VqaAnswer", "/v1/caption": "CaptionAnswer"}
ERROR_STATUSES = ["400", "408", "413", "415", "422", "503", "504"]
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def spec(served: RunningServer) -> dict:
    with urllib.request.urlopen(f"{served.url}/openapi.json") as resp:
        return json.loads(resp.read())


def test_every_answer_of_every_route_is_documented(spec: dict) -> None:
    for path, answer in ROUTES.items():
        post = spec["paths"][path]["post"]
        assert set(post["responses"]) == {"200", *ERROR_STATUSES}
        ok = post["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{answer}"}
        for status in ERROR_STATUSES:
            error = post["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorAnswer"}, status
        body = post["requestBody"]["content"]
        assert body["application/json"]["schema"]["properties"]["image"]["minLength"] == 1
        assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
        assert body["application/json"]["example"]["image"]  # an example the docs page can send as it is
    question = spec["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert question["question"]["minLength"] == 1 and question["question"]["maxLength"] == 40  # --max-question-chars
    health = spec["paths"]["/health"]["get"]["responses"]["200"]["content"]
    assert set(health) == {"text/plain"}
    assert spec["components"]["schemas"]["ErrorAnswer"]["required"] == ["error"]


def test_schemathesis_with_every_check_finds_nothing(served: RunningServer, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is a dev extra: pip install -e '.[dev]'")
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{served.url}/openapi.json"]
    cmd += ["--checks", "all", "--max-examples", "40", "--seed", "1", "--workers", "1", "--no-color"]
    cmd += ["--generation-database", "none", "--request-timeout", "30"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # (It warns that most generated requests get a 422: random base64 is seldom an image, as the config says.)
    assert "Failures:" not in result.stdout and " passed" in result.stdout, result.stdout[-3000:]
