"""The parse worker (sidecar/scrape/worker.py): a real child process, driven by the parent's side of it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from sidecar.scrape.fetch import ScrapeBounds, parsed
from sidecar.scrape.window import SnapshotWindow, WindowStep
from sidecar.scrape.worker import Job, ParseWorker
from sidecar.settings import Settings
from tests.support.hostile_engine import histogram_body
from tests.support.payloads import vllm_payload

CONFIG = Settings().analysis_config()
BOUNDS = ScrapeBounds(500_000, 1024, 64)


def _body(n: int) -> bytes:
    return vllm_payload("tiny", 100.0 * n, 400.0 * n, 300.0 * n).encode()


async def _step(worker: ParseWorker, body: bytes, at: float) -> WindowStep:
    return await worker.step(body, time.monotonic(), Job(len(body), at, 60.0, BOUNDS, CONFIG))


def test_the_worker_hands_back_the_same_window_as_one_kept_in_this_process() -> None:
    async def run() -> list[WindowStep]:
        worker = ParseWorker(timeout=30)
        try:
            return [await _step(worker, _body(n), 1000.0 + 5 * n) for n in range(4)]
        finally:
            await worker.stop()

    window = SnapshotWindow()
    here = [window.step(parsed(_body(n), 0.0, 1000.0 + 5 * n, BOUNDS), 1000.0 + 5 * n, 60.0, CONFIG) for n in range(4)]
    there = asyncio.run(run())
    assert [repr(s.stats) for s in there] == [repr(s.stats) for s in here]
    assert [s.result.result for s in there] == ["success"] * 4
    assert there[-1].stats is not None and there[-1].stats.models[0].acceptance_ratio == 0.75
    assert all(s.result.snapshot is None for s in there)  # the snapshots stay in the worker


def test_a_worker_killed_mid_parse_fails_that_scrape_only_and_the_next_one_starts_a_new_window() -> None:
    big = histogram_body(8 * 1024 * 1024)

    async def run() -> tuple[WindowStep, WindowStep, int, int | None]:
        worker = ParseWorker(timeout=30)
        try:
            await _step(worker, _body(1), 1000.0)
            first = worker.pid
            assert first is not None
            parsing = asyncio.ensure_future(_step(worker, big, 1005.0))
            await asyncio.sleep(0.3)  # the 8 MB body is being parsed
            os.kill(first, signal.SIGKILL)
            killed = await parsing
            after = await _step(worker, _body(3), 1010.0)
            assert worker.restarts == {"crashed": 1}
            return killed, after, first, worker.pid
        finally:
            await worker.stop()

    killed, after, first, second = asyncio.run(run())
    assert (killed.result.result, killed.stats) == ("parse_failed", None)
    assert killed.result.detail == "the parse worker exited (killed by SIGKILL; out of memory?)"
    # A new process, whose window holds this one snapshot only: no increase, so no ratio yet.
    assert second is not None and second != first
    assert after.result.result == "success" and after.stats is not None
    assert after.stats.window_seconds is None and after.stats.models[0].acceptance_ratio is None


def test_stopping_the_worker_ends_its_process() -> None:
    async def run() -> int:
        worker = ParseWorker(timeout=30)
        await worker.start()
        pid = worker.pid
        assert pid is not None
        assert await worker.stop() == 0  # it saw its stdin close and exited by itself
        return pid

    pid = asyncio.run(run())
    assert not Path(f"/proc/{pid}").exists()
