"""The dynamic batcher on its own: what it batches and groups, its timeouts, failures, shutdown, and an idle thread
that uses no CPU."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from vision_attn.serving.batcher import Batcher, BatcherStopped, WaitTimeout


class Recorder:
    """A `run_group` that records its calls and answers (key, item); `gate`, when set, holds each call until
    opened; items equal to "fail" make their group raise."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[Hashable, list[Any]]] = []
        self.gate = gate

    def __call__(self, key: Hashable, items: list[Any]) -> list[Any]:
        self.calls.append((key, list(items)))
        if self.gate is not None:
            self.gate.wait(10)
        if "fail" in items:
            raise RuntimeError("this group failed")
        return [(key, item) for item in items]


def run(batcher: Batcher, coro: Any) -> Any:
    batcher.start()
    try:
        return asyncio.run(coro)
    finally:
        batcher.stop()


async def submit_all(batcher: Batcher, jobs: list[tuple[Hashable, Any]], timeout: float = 10) -> list[Any]:
    return await asyncio.gather(*(batcher.submit(k, x, timeout) for k, x in jobs), return_exceptions=True)


def test_requests_arriving_together_run_as_batches_of_at_most_max_batch_size() -> None:
    runner = Recorder()
    batcher = Batcher(runner, max_batch_size=4, batch_timeout=0.2)
    results = run(batcher, submit_all(batcher, [("k", i) for i in range(6)]))
    assert results == [("k", i) for i in range(6)]
    assert [items for _, items in runner.calls] == [[0, 1, 2, 3], [4, 5]]


def test_a_batch_runs_each_key_apart_and_each_request_gets_its_own_result() -> None:
    runner = Recorder()
    batcher = Batcher(runner, max_batch_size=8, batch_timeout=0.2)
    jobs = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    assert run(batcher, submit_all(batcher, jobs)) == jobs
    assert runner.calls == [("a", [1, 3]), ("b", [2, 5]), ("c", [4])]


def test_a_failing_group_fails_only_its_own_requests() -> None:
    runner = Recorder()
    batcher = Batcher(runner, max_batch_size=8, batch_timeout=0.2)
    results = run(batcher, submit_all(batcher, [("a", 1), ("b", "fail"), ("a", 2), ("b", 3)]))
    assert results[0] == ("a", 1) and results[2] == ("a", 2)
    assert all(isinstance(r, RuntimeError) for r in (results[1], results[3]))


def test_the_batch_waits_batch_timeout_after_its_first_request_and_no_longer() -> None:
    runner = Recorder()
    batcher = Batcher(runner, max_batch_size=8, batch_timeout=0.3)

    async def staggered() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit("k", "first", 10))
        await asyncio.sleep(0.05)  # within the window: joins the first
        second = asyncio.ensure_future(batcher.submit("k", "second", 10))
        await asyncio.sleep(0.6)  # after it: a batch of its own
        third = asyncio.ensure_future(batcher.submit("k", "third", 10))
        return await asyncio.gather(first, second, third)

    run(batcher, staggered())
    assert [items for _, items in runner.calls] == [["first", "second"], ["third"]]


def test_a_request_that_waits_past_its_timeout_gets_wait_timeout_and_is_not_run() -> None:
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = Batcher(runner, max_batch_size=1, batch_timeout=0.0)

    async def scenario() -> list[Any]:
        busy = asyncio.ensure_future(batcher.submit("k", "busy", 10))  # holds the model thread until the gate opens
        await asyncio.sleep(0.1)
        with pytest.raises(WaitTimeout):
            await batcher.submit("k", "late", 0.1)
        gate.set()
        return [await busy, await batcher.submit("k", "after", 10)]

    assert run(batcher, scenario()) == [("k", "busy"), ("k", "after")]
    assert [items for _, items in runner.calls] == [["busy"], ["after"]]  # "late" was dropped, not run


def test_after_stop_requests_get_batcher_stopped() -> None:
    batcher = Batcher(Recorder(), max_batch_size=4, batch_timeout=0.0)
    batcher.start()
    batcher.stop()

    async def late() -> None:
        await batcher.submit("k", 1, 1)

    with pytest.raises(BatcherStopped):
        asyncio.run(late())


def thread_cpu_seconds(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a thread's CPU time from /proc (Linux)")
def test_an_idle_model_thread_uses_no_cpu() -> None:
    """It blocks on its queue: no CPU at all between requests (LitServe's loop polled every millisecond)."""
    runner = Recorder()
    batcher = Batcher(runner, max_batch_size=4, batch_timeout=0.01)
    batcher.start()
    try:
        asyncio.run(submit_all(batcher, [("k", 1)]))
        thread = next(t for t in threading.enumerate() if t.name == "vision-attn-model")
        assert thread.native_id is not None
        before = thread_cpu_seconds(thread.native_id)
        time.sleep(2.0)
        assert thread_cpu_seconds(thread.native_id) - before <= 0.01  # one clock tick at most
    finally:
        batcher.stop()
