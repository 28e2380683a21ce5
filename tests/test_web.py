"""The web page of `vision-attn serve`: its files, and the page itself in headless Chromium.

The browser tests drive Debian's `chromium` (/usr/bin/chromium; `make test` installs it where it can) through
Playwright's `executable_path`, so no browser is downloaded; without it they are skipped. They save screenshots
in the test's tmp_path and copy them to test-artifacts/ at the repository root (git-ignored): web.png, a
question answered with its first word's heatmap over the image, and web-caption.png, a caption with the
encoder rollout.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from serving import serve_model_dir_fixture, serve_pipe_fixture  # noqa: F401  (fixtures)

from vision_attn import GenerationConfig, Pipeline
from vision_attn.serving.harness import ROOT, running_server
from vision_attn.serving.model import VQA_MIN_BEAMS
from vision_attn.serving.web import STATIC

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
IMAGE = ROOT / "assets" / "scene_1.jpg"
QUESTION = (ROOT / "assets" / "scene_1.question.txt").read_text().strip()
MAX_ALPHA = 204  # round(255 * 0.8): the opacity app.js gives the highest attention
TIMEOUT_MS = 20_000  # for an answer from a model on a busy CPU


@pytest.fixture(scope="module")
def server(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = ["--max-batch-size", "4", "--threads", "1", "--log-level", "warning"]
    with running_server(serve_model_dir, args, tmp_path_factory.mktemp("web_log") / "serve.log") as running:
        yield running.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make browser` as root) for the browser tests")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, server: str) -> tuple[Page, list[str]]:
    """A fresh page at `server`/; the list collects its JavaScript errors and any request that leaves the server."""
    page = browser.new_page(viewport={"width": 1100, "height": 780})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
    local = (server, "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else problems.append(f"fetched {r.url}"))
    page.goto(f"{server}/")
    return page, problems


def overlay_alpha(page: Page, x: float | None = None, y: float | None = None) -> float:
    """The heatmap canvas: the opacity (0..255) at the pixel nearest (x, y), given as fractions of its width and
    height; without them, the fraction of its pixels that are not transparent."""
    return page.evaluate(
        """([x, y]) => {
            const c = document.getElementById("overlay");
            const ctx = c.getContext("2d");
            if (x !== null) return ctx.getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data[3];
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) n += d[i] > 0;
            return n / (c.width * c.height);
        }""",
        [x, y],
    )


def save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path, full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)


def test_the_page_and_its_files_are_served_and_need_nothing_from_elsewhere(server: str) -> None:
    with urllib.request.urlopen(f"{server}/") as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
        html = resp.read().decode()
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert "/static/app.js" in links and "/static/style.css" in links
    assert all(link.startswith(("/", "data:")) for link in links), links  # no CDN: the page works offline
    for f in STATIC.iterdir():
        assert not re.search(r"https?://|//cdn|@import", f.read_text()), f"{f.name} refers to another site"
        with urllib.request.urlopen(f"{server}/static/{f.name}") as resp:
            assert resp.read() == f.read_bytes()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}/static/nope.js")
    assert e.value.code == 404 and json.loads(e.value.read()) == {"error": "Not Found"}


def test_ask_and_caption_then_point_at_a_word_to_see_its_heatmap(
    browser: Browser, server: str, serve_pipe: Pipeline, tmp_path: Path
) -> None:
    page, problems = open_page(browser, server)
    page.set_input_files("#file", str(IMAGE))
    expect(page.locator("#preview")).to_be_visible()
    page.fill("#question", QUESTION)
    page.click("#ask")
    chips = page.locator("#words .chip")
    expect(chips.first).to_be_visible(timeout=TIMEOUT_MS)

    ranking = serve_pipe.rank_answers(IMAGE, QUESTION, 3, GenerationConfig(num_beams=VQA_MIN_BEAMS), maps="mean")
    want, ranked = ranking.maps, [dataclasses.asdict(a) for a in ranking.answers]
    assert chips.all_inner_texts() == want.words and want.words
    expect(page.locator("#ranked li .text")).to_have_text([a["answer"] for a in ranked])
    assert overlay_alpha(page) == 0  # no map until a word is pointed at

    chips.first.hover()
    expect(page.locator("#overlay")).to_have_attribute("data-shows", want.words[0])
    assert overlay_alpha(page) > 0.2
    # the map is drawn where it belongs: at a patch's centre, the opacity is that patch's weight on the words' scale
    m, (h, w) = want.word_maps[0], want.grid
    vmax = float(want.word_maps.max())
    for index in (int(m.argmax()), int(m.argmin())):
        i, j = divmod(index, w)
        got = overlay_alpha(page, (j + 0.5) / w, (i + 0.5) / h)
        assert got == pytest.approx(MAX_ALPHA * float(m[i, j]) / vmax, abs=4), (i, j)
    expect(page.locator("#legend")).to_be_visible()

    chips.first.click()  # pinned: stays when the pointer leaves
    page.mouse.move(5, 5)
    expect(page.locator("#overlay")).to_have_attribute("data-shows", want.words[0])
    save_screenshot(page, tmp_path, "web.png")

    page.click("#caption")
    expect(page.locator("#result")).to_have_attribute("data-kind", "caption", timeout=TIMEOUT_MS)
    caption = serve_pipe.caption_maps(IMAGE, GenerationConfig(max_new_tokens=48))
    expect(chips).to_have_text(caption.words)
    expect(page.locator("#ranked")).to_be_hidden()
    page.hover("#rollout")
    expect(page.locator("#overlay")).to_have_attribute("data-shows", "rollout")
    assert overlay_alpha(page) > 0.2
    page.set_viewport_size({"width": 1100, "height": 700})  # a resize redraws what the pointer is on
    expect(page.locator("#overlay")).to_have_attribute("data-shows", "rollout")
    assert overlay_alpha(page) > 0.2
    save_screenshot(page, tmp_path, "web-caption.png")
    assert not problems


def test_the_server_error_is_shown_and_a_dropped_image_replaces_the_file(browser: Browser, server: str) -> None:
    page, problems = open_page(browser, server)
    page.click("#caption")
    expect(page.locator("#error")).to_have_text("Choose or drop an image first.")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello there"}])
    page.click("#caption")
    error = page.locator("#error")
    expect(error).to_contain_text("422", timeout=TIMEOUT_MS)
    expect(error).to_contain_text("field 'image': not a recognised image file")
    expect(page.locator("#result")).to_be_hidden()

    page.evaluate(  # what a drag and drop of IMAGE delivers
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "scene_1.jpg", { type: "image/jpeg" }));
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(IMAGE.read_bytes()).decode(),
    )
    expect(page.locator("#preview")).to_be_visible()
    expect(error).to_be_hidden()
    expect(page.locator("#filename")).to_contain_text("scene_1.jpg")
    page.click("#ask")
    expect(error).to_have_text("Type a question first.")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    expect(page.locator("#words .chip").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_be_hidden()
    assert not problems
