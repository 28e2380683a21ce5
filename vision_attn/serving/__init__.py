"""The HTTP API of vision-attn (`vision-attn serve`): FastAPI routes over a dynamic batcher and one model thread.

options.py      ServeOptions, Limits: the settings
model.py        the only code that calls `Pipeline` (run_batch), and the model folder checks
batcher.py      the dynamic batcher and its model thread
body.py         reading a body within its limits into fields
schemas.py      the pydantic request and answer models (validation and OpenAPI)
app.py          the FastAPI app: routes, errors, OpenAPI
connections.py  request-head deadline and connection cap for uvicorn
server.py       build_server, run: what the CLI calls
web.py          the web page at / (files in static/)
harness.py      a server in a subprocess, for tests and benchmarks
"""

from vision_attn.serving.options import Limits, ServeOptions, Timeouts
from vision_attn.serving.server import build_server, run

__all__ = ["Limits", "ServeOptions", "Timeouts", "build_server", "run"]
