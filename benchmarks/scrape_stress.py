"""Peak RSS and /healthz latency of the real sidecar while it scrapes the worst bodies of issue #11.

Each case starts `spec-sidecar run` as a subprocess (with --window 12 x --scrape-interval, so its window holds
13 snapshots as with the defaults, 60 s / 5 s) against a hostile engine on 127.0.0.1
(tests/support/hostile_engine.py), probes /healthz every 25 ms from a process of its own while the sidecar scrapes
(tests/support/healthz_probes.py: each probe on its own connection; "held" is a probe's latency minus the time
the probing thread and the sidecar's event-loop thread waited for a CPU, i.e. what the sidecar itself took), and
reads the peak RSS (VmHWM in /proc) of the sidecar and of its parse worker (its child process) once the case has
run its scrapes: both count against the container's memory limit. Results go to docs/benchmarks.md ("Hostile
scrapes"); the chart's default memory limit is set from them.

    .venv/bin/python benchmarks/scrape_stress.py                # every case
    .venv/bin/python benchmarks/scrape_stress.py --case escaped_label --case histograms
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.healthz_probes import healthz_probes  # noqa: E402
from tests.support.hostile_engine import (  # noqa: E402
    admitted_worst_body,
    churn_body,
    escaped_label_body,
    histogram_body,
    hostile_engine,
    many_models_body,
)
from tests.support.replay import free_port  # noqa: E402
from tests.support.sidecar_process import stop_process  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    body: Callable[[int], bytes]
    scrapes: int  # scrapes the case waits for (the trickle case waits for time instead)
    flags: tuple[str, ...] = ()
    trickle_seconds: float | None = None


def _cases() -> list[Case]:
    escaped = escaped_label_body()
    histograms = histogram_body()
    mb = 1e6
    return [
        Case("escaped_label", f"{len(escaped) / mb:.1f} MB, one escaped 15 MB label value", lambda n: escaped, 4),
        Case("histograms", f"{len(histograms) / mb:.1f} MB of valid histogram series", lambda n: histograms, 6),
        Case(
            "histograms_admitted",
            "the same with --scrape-max-series 500000 (all parsed)",
            lambda n: histograms,
            6,
            ("--scrape-max-series", "500000"),
        ),
        Case("admitted_worst", "24,000 samples, 1 KB of new label text each, every scrape", admitted_worst_body, 20),
        Case("label_churn", "1.1 MB, a new label name every scrape", churn_body, 90),
        Case(
            "many_models",
            "4.9 MB, 20,001 model names (60,003 samples: --scrape-max-series 100000 admits them)",
            many_models_body,
            60,
            ("--scrape-max-series", "100000"),
        ),
        Case("trickle", "one byte every 0.5 s", lambda n: escaped_label_body(4096, 16), 0, (), 0.5),
    ]


@dataclass
class Measured:
    case: str
    scrapes: int
    seconds: float
    peak_rss_mib: float
    worker_peak_rss_mib: float  # the parse worker's (0: none, as in a checkout from before it existed)
    healthz_p50_ms: float
    healthz_p90_ms: float
    healthz_p99_ms: float
    healthz_max_ms: float
    held_max_ms: float
    probes: int


def run_case(case: Case, interval: float, max_seconds: float, root: Path, flags: bool) -> Measured:
    with hostile_engine(case.body, case.trickle_seconds) as engine, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable, "-m", "sidecar.cli", "run", "--listen", f"127.0.0.1:{port}", "--vllm-url", engine.url,
            "--scrape-interval", str(interval), "--window", str(12 * interval), *(case.flags if flags else ()),
        ]  # fmt: skip
        log = Path(tmp) / "sidecar.log"
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=dict(os.environ))
        try:
            _wait_for(url)
            started = time.monotonic()
            with healthz_probes(url, process.pid) as probes:
                target = case.scrapes or 10**9
                while engine.hits < target and time.monotonic() - started < max_seconds and process.poll() is None:
                    time.sleep(0.1)
                if case.scrapes:
                    time.sleep(min(interval, 2.0) + 1.0)  # let the last scrape be parsed and judged
            seconds = time.monotonic() - started
            peak = _peak_rss_kib(process.pid) / 1024
            worker = sum(_peak_rss_kib(child) for child in _children(process.pid)) / 1024
        finally:
            stop_process(process, timeout=15)
    latencies = probes.latencies
    ordered = sorted(latencies) or [float("nan")]
    return Measured(
        case.name,
        engine.hits,
        seconds,
        peak,
        worker,
        statistics.median(ordered) * 1000,
        ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        ordered[-1] * 1000,
        max(probes.held or [float("nan")]) * 1000,
        len(latencies),
    )


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"sidecar at {url} did not answer")


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="run only these cases (default: all)")
    parser.add_argument("--interval", type=float, default=1.0, help="the sidecar's --scrape-interval")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="give up on a case after this long")
    parser.add_argument("--trickle-seconds", type=float, default=12.0, help="how long the trickle case runs")
    parser.add_argument(
        "--sidecar-root",
        type=Path,
        default=ROOT,
        help="checkout whose sidecar package runs (another worktree measures another commit; default: this one)",
    )
    parser.add_argument(
        "--without-case-flags",
        action="store_true",
        help="leave out the cases' own flags (for a checkout from before they existed)",
    )
    args = parser.parse_args()
    cases = [c for c in _cases() if not args.case or c.name in args.case]
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(
        "| case | what | scrapes | seconds | peak RSS MiB | worker peak RSS MiB | /healthz p50 ms | p90 ms | p99 ms "
        "| max ms | held max ms | probes |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        limit = args.trickle_seconds if case.trickle_seconds else args.max_seconds
        m = run_case(case, args.interval, limit, args.sidecar_root.resolve(), not args.without_case_flags)
        print(
            f"| {m.case} | {case.what} | {m.scrapes} | {m.seconds:.0f} | {m.peak_rss_mib:.0f} | "
            f"{m.worker_peak_rss_mib:.0f} | "
            f"{m.healthz_p50_ms:.1f} | {m.healthz_p90_ms:.1f} | {m.healthz_p99_ms:.0f} | {m.healthz_max_ms:.0f} | "
            f"{m.held_max_ms:.0f} | "
            f"{m.probes} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
