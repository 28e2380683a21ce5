"""A dynamic batcher: requests from the event loop go to one model thread, which runs them in batches.

The thread blocks on its queue for a batch's first request (an idle server uses no CPU), then waits up to
`batch_timeout` after that request arrived for up to `max_batch_size - 1` others. A batch is run as groups of
equal keys, one `run_group` call each, so that requests with different settings never share a model call and
a batched answer is the one the request would get alone. Running the model in its own thread keeps the event
loop free to read, validate and answer other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RunGroup = Callable[[Hashable, list[Any]], list[Any]]


class WaitTimeout(Exception):
    """A request waited longer than its timeout for the model."""


class BatcherStopped(Exception):
    """A request came after the batcher was stopped (the server is shutting down)."""


@dataclass(eq=False)
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # its waiter gave up: run it only if its batch runs anyway, and drop the result


_STOP = object()


class Batcher:
    """Collects `submit`ted items into batches for `run_group(key, items) -> results` (same order, same length)."""

    def __init__(self, run_group: RunGroup, max_batch_size: int, batch_timeout: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.run_group, self.max_batch_size, self.batch_timeout = run_group, max_batch_size, batch_timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="vision-attn-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch under way and end the thread; requests still queued get `BatcherStopped`."""
        self._stopped = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    async def submit(self, key: Hashable, item: Any, timeout: float) -> Any:
        """`item`'s result once its batch has run; `WaitTimeout` after `timeout` seconds; the group's exception if
        `run_group` raised."""
        if self._stopped:
            raise BatcherStopped
        job = _Job(key, item, asyncio.get_running_loop().create_future())
        self._queue.put(job)
        try:
            return await asyncio.wait_for(job.future, timeout)
        except TimeoutError:
            job.abandoned = True
            raise WaitTimeout from None

    def _serve(self) -> None:
        while (first := self._queue.get()) is not _STOP:
            self._run(self._collect(first))
        while True:  # stopped: what is still queued will not run
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                _settle([(job, None, BatcherStopped())])
        log.info("model thread stopped")

    def _collect(self, first: _Job) -> list[_Job]:
        """`first` and what else arrives up to `batch_timeout` after it; at once what is queued if that has passed."""
        batch, deadline = [first], first.arrived + self.batch_timeout
        while len(batch) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)  # run this batch, then stop
                break
            batch.append(job)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        start = time.monotonic()
        groups: dict[Hashable, list[_Job]] = {}
        for job in batch:
            if not job.abandoned:
                groups.setdefault(job.key, []).append(job)
        for key, jobs in groups.items():
            try:
                results = self.run_group(key, [job.item for job in jobs])
                if len(results) != len(jobs):
                    raise RuntimeError(f"run_group gave {len(results)} results for {len(jobs)} items")
            except Exception as e:  # fails this group's requests only; the thread goes on serving
                log.exception("the model failed on a batch of %d with key %r", len(jobs), key)
                _settle([(job, None, e) for job in jobs])
                continue
            _settle([(job, result, None) for job, result in zip(jobs, results, strict=True)])
        waited = start - batch[0].arrived
        log.debug(
            "batch of %d in %d groups: waited %.1f ms, ran %.1f ms",
            len(batch),
            len(groups),
            1000 * waited,
            1000 * (time.monotonic() - start),
        )


Outcome = tuple[_Job, Any, BaseException | None]  # a job, and its result or its error


def _settle(outcomes: list[Outcome]) -> None:
    """Hand each job its result or error on its event loop (futures are not thread-safe), waking each loop once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, some in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, some)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


def _deliver(outcomes: list[Outcome]) -> None:
    for job, result, error in outcomes:
        if job.future.done():  # cancelled: its waiter timed out or disconnected
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
