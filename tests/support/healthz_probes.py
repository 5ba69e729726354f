"""Time /healthz of a running sidecar from a process of its own, on a fixed schedule.

Probes start every ``--every`` seconds, each on its own connection, whether or not earlier ones have answered, so
a blocked event loop is sampled as often as a free one and the quantiles are quantiles over time. They run in a
separate process so that nothing in the test's own process (a stand-in engine building a 25 MB body in a thread,
holding that process's GIL) is counted as the sidecar's latency.

    with healthz_probes(sidecar.url) as probes:
        ...                               # let the sidecar scrape
    probes.latencies                      # seconds, in the order the probes started

What the machine did not give is told apart from what the sidecar took: each probe also reads how long its own
thread and the sidecar's event-loop thread waited for a CPU while it ran (``run_delay`` in
/proc/.../schedstat, the time a thread was runnable but not running). ``held`` is the latency minus those
waits: the time the sidecar itself kept the probe waiting (its event loop busy or blocked, or waiting for its
GIL), which is what a busy 2-core machine cannot inflate. A blocked loop does not show up as a wait for a CPU:
a thread waiting for the GIL or for its loop to come back sleeps.

Run as a script it probes until its stdin closes, then prints ``[[latency, held], ...]`` as JSON on stdout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # where `-m tests.support.healthz_probes` is found


@dataclass
class Probes:
    process: subprocess.Popen[bytes]
    latencies: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)  # each latency minus both threads' waits for a CPU

    def describe(self) -> str:
        raw, held = sorted(self.latencies), sorted(self.held)

        def ms(values: list[float]) -> list[float]:
            return [round(v * 1000, 1) for v in values]

        return (
            f"{len(raw)} probes; latency ms: median {ms(raw)[len(raw) // 2]}, slowest {ms(raw[-5:])}; "
            f"held by the sidecar ms: median {ms(held)[len(held) // 2]}, slowest {ms(held[-5:])}"
        )


@contextmanager
def healthz_probes(url: str, pid: int, every: float = 0.025) -> Iterator[Probes]:
    """Probe ``url``/healthz for as long as the block runs (``pid``: the sidecar's process, whose event loop
    runs on its main thread); ``latencies`` and ``held`` are filled when it ends."""
    cmd = [sys.executable, "-m", "tests.support.healthz_probes", url, str(pid), str(every)]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT)
    probes = Probes(process)
    try:
        yield probes
    finally:
        out, _ = process.communicate(timeout=120)  # closes stdin: the prober stops and reports
    assert process.returncode == 0, f"the prober failed ({process.returncode})"
    pairs = json.loads(out)
    probes.latencies = [latency for latency, _ in pairs]
    probes.held = [held for _, held in pairs]


def _cpu_wait(schedstat: str) -> float:
    """Seconds the thread has waited, runnable, for a CPU (the second field of schedstat, in nanoseconds)."""
    return int(Path(schedstat).read_text().split()[1]) / 1e9


def probe(host: str, port: int, loop_thread: str) -> tuple[float, float]:
    """One GET /healthz on a fresh connection (a raw socket: an HTTP client would cost more than the answer):
    its latency, and the latency minus this thread's and ``loop_thread``'s waits for a CPU meanwhile."""
    own = "/proc/thread-self/schedstat"
    waited = _cpu_wait(own) + _cpu_wait(loop_thread)
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    latency = time.perf_counter() - started
    waited = _cpu_wait(own) + _cpu_wait(loop_thread) - waited
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/healthz answered {answer[:100]!r}")
    return latency, max(0.0, latency - waited)


def main() -> None:
    url, pid, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = url.removeprefix("http://").split(":")
    loop_thread = f"/proc/{pid}/task/{pid}/schedstat"
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    futures: list[Future[tuple[float, float]]] = []
    with ThreadPoolExecutor(max_workers=256) as pool:
        next_at = time.monotonic()
        while not stop.is_set():
            futures.append(pool.submit(probe, host, int(port), loop_thread))
            next_at += every
            stop.wait(max(0.0, next_at - time.monotonic()))
    json.dump([f.result() for f in futures], sys.stdout)


if __name__ == "__main__":
    main()
