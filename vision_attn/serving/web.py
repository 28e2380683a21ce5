"""The web page of `vision-attn serve`: GET / and its files under /static/.

Plain HTML, CSS and JavaScript in `static/` beside this file (package data: no build step, no CDN, so the page
works offline). It calls the same routes as any client, with `return_attention`, and draws the maps itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")  # a folder in an editable install and in a wheel alike


def add_web_page(app: FastAPI, static: Path = STATIC) -> None:
    """Serve `static/index.html` at GET / and `static/*` at /static/."""
    index = static / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"{index} is missing: vision-attn was installed without its web page; reinstall it")

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=static), name="static")
