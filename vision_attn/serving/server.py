"""`vision-attn serve`: load the model in this process, then run the app under uvicorn until SIGTERM or Ctrl-C.

The model loads before the server binds, so a bad model folder or setting is a `ValueError` (shown by the CLI
as one line) and no port is ever opened. One process, one model thread: several model processes would each
hold the model and compete for the same cores; batching is what gains throughput here.
"""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path
from typing import Any

import torch
import uvicorn

from vision_attn.serving.app import build_app
from vision_attn.serving.connections import ConnectionGuard, fit_open_files
from vision_attn.serving.model import load_pipeline
from vision_attn.serving.options import ServeOptions

log = logging.getLogger(__name__)


def build_server(model_dir: str | Path, options: ServeOptions) -> uvicorn.Server:
    """The server for the model in `model_dir`, not yet bound; raises `ValueError` (`ModelFolderError` among
    them) naming what is wrong."""
    pipe = load_pipeline(model_dir, options.device, options.max_batch_size, options.limits.max_pixels)
    # The process is ours from here (the model loaded): its torch threads and log level.
    torch.set_num_threads(options.torch_threads)
    logging.getLogger("vision_attn").setLevel(options.log_level.upper())
    guard = ConnectionGuard(fit_open_files(options.max_connections), options.timeouts.header)
    config = uvicorn.Config(
        guard.track(build_app(pipe, options)),
        host=options.host,
        port=options.port,
        http=guard.protocol_class,
        # asyncio's loop, not uvloop: when open files run out, asyncio stops accepting for a moment (clients wait
        # in the backlog) where libuv accepts and closes what is waiting (clients are reset).
        loop="asyncio",
        timeout_keep_alive=options.timeouts.keep_alive,  # type: ignore[arg-type]  # a float works: call_later
        proxy_headers=False,  # the client address is the peer's: ConnectionGuard finds connections by it
        lifespan="on",
        log_level=options.log_level,
        access_log=options.log_level == "debug",
    )
    log.info(
        "model %s loaded; %d torch threads, at most %d connections",
        model_dir,
        options.torch_threads,
        guard.max_connections,
    )
    # Everything loaded so far (torch, the model, the tokenizer, the web framework: some 400,000 objects) lives as
    # long as the process. Left to the collector, each full collection walked them all, stalling every thread
    # for about 250 ms on a 2-core machine; frozen, collections walk only what requests create.
    gc.collect()
    gc.freeze()
    return uvicorn.Server(config)


def run(server: uvicorn.Server) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut down gracefully (answer what is under way, stop the model thread)
    and return."""

    def stop(signum: int, frame: Any) -> None:
        # uvicorn handles both signals while it runs, then raises the one it got again for the handler it found
        # here: this one, which makes that a normal return rather than a death by signal or a KeyboardInterrupt.
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server.run()
