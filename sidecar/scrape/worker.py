"""The parse worker: one long-lived child process that parses each scrape and keeps the window of snapshots.

Why a process and not a thread: a parse of a 30 MB body is seconds of Python, and a thread doing it holds the
GIL for most of that time; the event loop, which answers /healthz, /metrics and the tap, then waits for the GIL
each time it needs it (single /healthz probes of 0.16-0.22 s on a shared machine, docs/benchmarks.md, "Hostile
scrapes"). In a process of its own the parse has its own GIL; the event loop's process sends the body and gets
back a few numbers per model (a ``WindowStep``), so it never holds a snapshot either.

The protocol, on the child's stdin and stdout: the parent writes a frame (8-byte big-endian length, then a
pickled ``Job``) followed by the body's bytes; the child answers one frame holding a pickled ``WindowStep``. Only
this process's own parent talks to it, so pickle is safe here. The child's fd 1 is re-pointed at stderr before
anything runs, so a stray print can never corrupt a reply.

What can go wrong and what happens: the child dies (out of memory, a bug: its traceback goes to the sidecar's
log) or takes longer than ``--scrape-parse-timeout``: the parent kills it if needed, counts it
(``specdecode_parse_worker_restarts_total{reason}``), the scrape is ``parse_failed`` (no window, target_up 0),
and the next scrape starts a fresh child with an empty window. The child never outlives the sidecar: it exits
when its stdin closes (the parent stopped or died), and on Linux the kernel kills it when the parent dies
mid-parse (PR_SET_PDEATHSIG). Its oom_score_adj is 500: out of memory, the kernel picks it over the sidecar.
It runs at the sidecar's own priority: the event loop sleeps most of the time, and a thread that wakes from
sleep preempts a busy one at once; a lower priority only starved the parse on a busy machine (3 s of parsing
took over 30 s at nice +10, load average 10 on 2 CPUs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import pickle
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sidecar.core.stats import AnalysisConfig
from sidecar.scrape.fetch import ScrapeBounds, failed, parsed
from sidecar.scrape.window import SnapshotWindow, WindowStep

RESTART_REASONS = ("crashed", "timeout")
_HEADER = 8
_PIECE = 1 << 20
_OOM_SCORE_ADJ = 500
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Job:
    """One scrape for the child: the body's length (its bytes follow the frame) and how to judge it."""

    body_bytes: int
    received_at: float  # time.time() when the body was in: the snapshot's taken_at and the window's present
    window_seconds: float
    bounds: ScrapeBounds
    config: AnalysisConfig


class ParseWorker:
    """The parent's side: starts the child when a scrape needs it, and restarts it after a crash or a timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.restarts: Counter[str] = Counter()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self._process is not None and self._process.returncode is None:
            return
        # -P: do not put the working directory on sys.path (a folder named `sidecar` there must not be imported).
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "sidecar.scrape.worker", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def step(self, body: bytes | bytearray, started: float, job: Job) -> WindowStep:
        """The window after this body; ``started`` (time.monotonic()) is when the scrape began."""
        if self._process is not None and self._process.returncode is not None:
            # It died since the last scrape, its window with it: counted like a death mid-parse, one failed scrape.
            return await self._restart("crashed", started, "")
        try:
            await self.start()
        except OSError as exc:  # no process to start (a broken install): say so at every scrape, keep serving
            return WindowStep(failed("parse_failed", started, f"the parse worker did not start: {exc}"))
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        frame = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
        try:
            async with asyncio.timeout(self.timeout):
                process.stdin.write(len(frame).to_bytes(_HEADER, "big") + frame)
                # In pieces, each sent before the next is written: the pipe takes 64 KiB at a time, and the rest
                # of a body written whole would be copied into the transport's buffer (another 30 MB here).
                with memoryview(body) as view:
                    for at in range(0, len(view), _PIECE):
                        process.stdin.write(view[at : at + _PIECE])
                        await process.stdin.drain()
                size = int.from_bytes(await process.stdout.readexactly(_HEADER), "big")
                answer = await process.stdout.readexactly(size)
        except TimeoutError:
            return await self._restart("timeout", started, f"the parse took more than {self.timeout:g} s")
        except asyncio.CancelledError:  # the sidecar is stopping; the child's place in the protocol is unknown
            await self.stop(grace=0.0)
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            return await self._restart("crashed", started, "")
        step: WindowStep = pickle.loads(answer)  # a few numbers per model: quick, on the event loop
        return step

    async def _restart(self, reason: str, started: float, detail: str) -> WindowStep:
        # A crashed child is exiting: wait a moment for its exit code. One that overran is killed now.
        code = await self.stop(grace=1.0 if reason == "crashed" else 0.0)
        if reason == "crashed":
            detail = f"the parse worker exited ({_describe_exit(code)})"
        self.restarts[reason] += 1
        # Logged by the Monitor with the other failed scrapes (once per run of failures alike), detail included.
        return WindowStep(failed("parse_failed", started, detail))

    async def stop(self, grace: float = 2.0) -> int | None:
        """End the child: close its stdin (it exits when idle), kill it after ``grace`` seconds; its exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.stdin is not None:
            process.stdin.close()
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(process.wait(), grace)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        return await process.wait()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; out of memory?" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


# --- the child ---------------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere stdin's end is the only signal
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def _read(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer jobs until ``requests`` ends; the window lives as long as this call."""
    window = SnapshotWindow()
    while (header := _read(requests, _HEADER)) is not None:
        frame = _read(requests, int.from_bytes(header, "big"))
        job: Job | None = pickle.loads(frame) if frame is not None else None
        body = _read(requests, job.body_bytes) if job is not None else None
        if job is None or body is None:
            return
        result = parsed(body, time.monotonic(), job.received_at, job.bounds)
        del body
        answer = pickle.dumps(window.step(result, job.received_at, job.window_seconds, job.config), -1)
        del result
        replies.write(len(answer).to_bytes(_HEADER, "big") + answer)
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and the like go to stderr: stdout's pipe carries replies only
    # A terminal's Ctrl-C reaches the whole process group; the parent decides when this child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(sys.argv[1]))
    # Out of memory, the kernel should kill this process, which the sidecar replaces, rather than the sidecar.
    # (A container whose cgroup kills as a group, as the kubelet sets up on cgroup v2, restarts whole anyway.)
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(f"{_OOM_SCORE_ADJ}\n")
    # Modules live as long as the process: keep them out of the collector's full passes.
    gc.collect()
    gc.freeze()
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
