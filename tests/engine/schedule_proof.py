"""Speculation per load band on a real engine: does it pay, and does a K-per-batch-size schedule hold?

Two measurements, both from what the engine itself exposes:

- **Per band.** `measure_level` drives a closed loop of self-timing clients (tests.engine.timing) at one
  concurrency and cuts what the engine's /metrics say meanwhile into windows the way the sidecar does: a scrape
  every SCRAPE_SECONDS, `compute_stats` over a window's scrapes and `sample_from_stats` for its sample (mean TPOT
  from vLLM's per-request histogram, mean running requests). A window closes once it holds `min_requests`
  finished requests (the sidecar's windows are fixed in time and the load varies; here the load is fixed, so
  the count fixes the time). `measure_bands` does it at each concurrency with speculation on and off in turn,
  window by window, and `propose_schedule` (sidecar.core.load_schedule) turns those windows into the sidecar's cut.
- **Drafts per load.** vLLM's speculative-config key `num_speculative_tokens_per_batch_size` (docs/engines.md,
  "K per batch size") picks K per scheduler step from the number of requests scheduled in that step. Its
  effect shows in the engine's counters `vllm:spec_decode_num_drafts_total` (request-steps that carried drafts)
  and `vllm:spec_decode_num_draft_tokens_total`, against `vllm:generation_tokens_total`; `drafts_at` drives one
  level of concurrency and returns their deltas over it.

Used by tests/e2e/test_schedule_engine.py and benchmarks/schedule_bands.py.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.measured_speedup import SpeedSample, sample_from_stats
from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, compute_stats
from sidecar.scrape.fetch import parse_payload
from tests.engine.flavours import Flavour
from tests.engine.manager import EngineManager
from tests.engine.server import Engine
from tests.engine.timing import Timed, closed_loop
from tests.engine.workload import REQUEST_TIMEOUT_SECONDS, Request, default_prompts, fetch_metrics, run_workload

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
GENERATED = "vllm:generation_tokens_total"
COUNTERS = (DRAFTS, DRAFT_TOKENS, ACCEPTED, GENERATED)
TPOT_COUNT = "vllm:request_time_per_output_token_seconds_count"
RUNNING = "vllm:num_requests_running"
SCRAPE_SECONDS = 0.5
STEADY_WAIT_SECONDS = 60.0
STEADY_POLL_SECONDS = 0.05
STEADY_TRIES = 5
MIN_STEADY_TOKENS = 16  # per request, in the stretch read: enough steps that "drafts 0" means none were made
SETTLE_SECONDS = 2.0  # after the load starts, before the first window: every client has a request in flight
LEVEL_TIMEOUT_SECONDS = 240.0


def counters(url: str) -> dict[str, float]:
    """The engine's totals of COUNTERS (0 for a series it does not expose: no speculation)."""
    totals = dict.fromkeys((*COUNTERS, TPOT_COUNT, RUNNING), 0.0)
    for family in text_string_to_metric_families(fetch_metrics(url)):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


@dataclass(frozen=True)
class DraftDelta:
    """What the engine counted over one level of load."""

    concurrency: int
    requests: int
    drafts: int  # request-steps that carried draft tokens
    draft_tokens: int
    accepted_tokens: int
    generated_tokens: int

    @property
    def draft_tokens_per_token(self) -> float:
        return self.draft_tokens / self.generated_tokens if self.generated_tokens else 0.0

    def line(self) -> str:
        return (
            f"{self.concurrency} in flight: {self.requests} requests, {self.generated_tokens} tokens generated, "
            f"{self.drafts} drafts, {self.draft_tokens} draft tokens, {self.accepted_tokens} accepted"
        )


def drafts_at(engine: Engine, concurrency: int, requests: int, max_tokens: int = 24) -> DraftDelta:
    """`requests` requests at temperature 0, `concurrency` at a time, and the engine's counter deltas over them."""
    before = counters(engine.url)
    results = run_workload(engine, requests, 0.0, max_tokens=max_tokens, concurrency=concurrency)
    bad = [r for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} request(s) failed, the first: HTTP {bad[0].status} {bad[0].raw[:300]!r}")
    after = counters(engine.url)
    delta = {name: round(after[name] - before[name]) for name in COUNTERS}
    return DraftDelta(concurrency, requests, delta[DRAFTS], delta[DRAFT_TOKENS], delta[ACCEPTED], delta[GENERATED])


class NoSteadyStretchError(Exception):
    """One try at a steady level found no stretch in which exactly that many requests ran."""


def steady_drafts(engine: Engine, concurrency: int, hold: float = 1.0, max_tokens: int = 960) -> DraftDelta:
    """The engine's counter deltas over up to `hold` seconds in which exactly `concurrency` requests run.

    `concurrency` long streaming requests go out at once; once the engine reports them all running, its counters
    are read, then read again every STEADY_POLL_SECONDS for up to `hold` seconds while it still reports them all
    running, and the streams are closed (vLLM aborts a request whose client goes away). Nothing else is sent, so
    the running count can only fall: two reads that both say `concurrency` enclose only steps of exactly that
    many requests. No arrival, no prefill, no request finishing: the batch size the schedule looks up is the
    concurrency itself. (`drafts_at` instead counts whole requests, arrivals and ends included: there a burst
    of arrivals faster than the client sends them gives steps of 1-2 requests, which draft under a cut above 2.)

    On a quiet machine the tiny family generates a long request in about a second, so a try can miss its
    stretch (the requests end before the engine reports them all running, or too soon after): it is tried
    again, up to STEADY_TRIES times, and must hold at least MIN_STEADY_TOKENS per request."""
    missed: list[str] = []
    for _ in range(STEADY_TRIES):
        try:
            return _steady_once(engine, concurrency, hold, max_tokens)
        except NoSteadyStretchError as why:
            missed.append(str(why))
    raise RuntimeError(f"{concurrency} in flight: no steady stretch in {STEADY_TRIES} tries: " + "; ".join(missed))


def _steady_once(engine: Engine, concurrency: int, hold: float, max_tokens: int) -> DraftDelta:
    prompts = default_prompts()
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        body = Request(prompts[i % len(prompts)], 0.0, max_tokens=max_tokens, seed=i, stream=True).body(engine.model)
        try:
            with (
                httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS) as client,
                client.stream("POST", f"{engine.url}/v1/completions", json=body) as response,
            ):
                response.raise_for_status()
                for _line in response.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError as error:
            errors.append(error)

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + STEADY_WAIT_SECONDS
        before = counters(engine.url)
        while before[RUNNING] < concurrency:
            if errors:  # a refused request is not a race: no retry
                raise RuntimeError(f"{concurrency} in flight: a request failed: {errors[0]!r}")
            if not any(thread.is_alive() for thread in threads):
                raise NoSteadyStretchError(f"all ended before the engine reported {concurrency} running")
            if time.monotonic() > deadline:
                waited = f"running {before[RUNNING]:g} after {STEADY_WAIT_SECONDS:g} s"
                raise RuntimeError(f"{concurrency} in flight: {waited}")
            time.sleep(STEADY_POLL_SECONDS)
            before = counters(engine.url)
        after = before
        until = time.monotonic() + hold
        while time.monotonic() < until:
            time.sleep(STEADY_POLL_SECONDS)
            latest = counters(engine.url)
            if latest[RUNNING] != concurrency:
                break
            after = latest
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT_SECONDS)
    delta = {name: round(after[name] - before[name]) for name in COUNTERS}
    if delta[GENERATED] < MIN_STEADY_TOKENS * concurrency:
        raise NoSteadyStretchError(f"{delta[GENERATED]} tokens generated while all {concurrency} ran")
    return DraftDelta(concurrency, concurrency, delta[DRAFTS], delta[DRAFT_TOKENS], delta[ACCEPTED], delta[GENERATED])


@dataclass(frozen=True)
class Level:
    """One concurrency in one state: the sidecar's windows of it and the client-timed requests inside them."""

    concurrency: int
    speculation: bool
    samples: tuple[SpeedSample, ...]
    timed: tuple[Timed, ...]

    def median_tpot(self) -> float:
        return float(statistics.median(t.tpot for t in self.timed))

    def mean_tpot(self) -> float:
        """The clients' mean TPOT: the quantity the sidecar's windows average (from the engine's histogram)."""
        return float(statistics.fmean(t.tpot for t in self.timed))

    def window_tpot(self) -> float:
        """Geometric mean of the windows' mean TPOT: what the sidecar compares."""
        return float(statistics.geometric_mean(s.tpot for s in self.samples))

    def running(self) -> float:
        return statistics.fmean(s.running for s in self.samples)


def _snapshot(engine: Engine) -> Snapshot:
    snap, _bad, _examples = parse_payload(fetch_metrics(engine.url), time.monotonic())
    return snap


def _tpot_count(snap: Snapshot, model: str) -> float:
    stats = compute_stats([snap], AnalysisConfig()).model(model)
    return 0.0 if stats is None else stats.latency_observations.get("tpot", 0.0)


def measure_level(engine: Engine, concurrency: int, *, windows: int, max_tokens: int, min_requests: int) -> Level:
    """`windows` windows of the sidecar's kind under a closed loop of `concurrency` clients at temperature 0."""
    stop = threading.Event()
    samples: list[SpeedSample] = []
    spans: list[tuple[float, float]] = []
    config = AnalysisConfig()
    with ThreadPoolExecutor(max_workers=1) as background:
        loading = background.submit(
            closed_loop, engine.url, engine.model, default_prompts(), concurrency=concurrency,
            seconds=LEVEL_TIMEOUT_SECONDS, max_tokens=max_tokens, stop=stop,
        )  # fmt: skip
        try:
            time.sleep(SETTLE_SECONDS)
            deadline = time.monotonic() + LEVEL_TIMEOUT_SECONDS - SETTLE_SECONDS
            while len(samples) < windows and not loading.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{concurrency} in flight: {len(samples)} of {windows} windows in time")
                window = [_snapshot(engine)]
                while _tpot_count(window[-1], engine.model) - _tpot_count(window[0], engine.model) < min_requests:
                    time.sleep(SCRAPE_SECONDS)
                    window.append(_snapshot(engine))
                stats = compute_stats(window, config).model(engine.model)
                sample = None if stats is None else sample_from_stats(stats, time.time())
                if sample is None:
                    raise RuntimeError(f"{concurrency} in flight: the window gave no sample ({stats!r})")
                samples.append(sample)
                spans.append((window[0].taken_at or 0.0, window[-1].taken_at or 0.0))
        finally:
            stop.set()
        timed = loading.result()
    began, ended = spans[0][0], spans[-1][1]
    inside = tuple(t for t in timed if t.sent >= began and t.sent + t.e2e <= ended)
    return Level(concurrency, samples[0].speculation, tuple(samples), inside)


@dataclass(frozen=True)
class Bands:
    on: tuple[Level, ...]
    off: tuple[Level, ...]

    @property
    def samples(self) -> tuple[SpeedSample, ...]:
        return tuple(s for level in (*self.on, *self.off) for s in level.samples)

    def as_json(self) -> dict[str, object]:
        def level(x: Level) -> dict[str, object]:
            return {
                "concurrency": x.concurrency,
                "running": x.running(),
                "window_tpot": [s.tpot for s in x.samples],
                "window_requests": [s.requests for s in x.samples],
                "client_median_tpot": x.median_tpot(),
                "client_requests": len(x.timed),
                "acceptance_length": [s.mean_acceptance_length for s in x.samples],
            }

        return {"on": [level(x) for x in self.on], "off": [level(x) for x in self.off]}


def measure_bands(
    manager: EngineManager,
    on: Flavour,
    off: Flavour,
    concurrencies: Sequence[int],
    *,
    windows: int,
    max_tokens: int,
    min_requests: int,
    rounds: int = 1,
    enough: Callable[[Bands], bool] | None = None,
) -> Bands:
    """Each concurrency with speculation on and off, window by window in turn; the manager is left running `on`.

    Both engines run side by side (the manager's machine lock covers both; only one is under load at a time), so
    that the machine's other work, which comes and goes by the minute here, weighs on both states alike: measured
    one state after the other, a TPOT ratio shifts by a factor of 2-3 with that work alone.

    A round measures every concurrency (`windows` windows per state); up to `rounds` rounds run, each adding its
    windows to the last, until `enough` says the windows so far suffice (without it, all rounds run)."""
    engine_on = manager.get(on)
    say(f"{on.name}: engine up in {engine_on.startup_seconds or 0:.0f} s")
    engine_off = Engine(off, engine_on.log_path.parent).start()
    say(f"{off.name}: engine up in {engine_off.startup_seconds or 0:.0f} s")
    parts: dict[tuple[int, bool], list[Level]] = {(c, s): [] for c in concurrencies for s in (True, False)}

    def so_far() -> Bands:
        def levels(speculation: bool) -> tuple[Level, ...]:
            return tuple(_joined(parts[c, speculation]) for c in concurrencies)

        return Bands(levels(True), levels(False))

    try:
        for engine in (engine_off, engine_on):
            # Warm-up, not measured: the first requests of an engine pay for compilation and caches.
            closed_loop(engine.url, engine.model, default_prompts(), concurrency=2, seconds=3.0, max_tokens=max_tokens)
        for round_ in range(1, rounds + 1):
            for c in concurrencies:
                for _ in range(windows):
                    for speculation, engine in ((False, engine_off), (True, engine_on)):
                        level = measure_level(engine, c, windows=1, max_tokens=max_tokens, min_requests=min_requests)
                        parts[c, speculation].append(level)
                for speculation in (False, True):
                    level = _joined(parts[c, speculation])
                    say(
                        f"round {round_}, {'on' if speculation else 'off'}, {c} in flight: running "
                        f"{level.running():.2f}, window TPOT {', '.join(f'{1000 * s.tpot:.1f}' for s in level.samples)}"
                        f" ms, client median {1000 * level.median_tpot():.1f} ms over {len(level.timed)} requests"
                    )
            if enough is not None and enough(so_far()):
                break
    finally:
        engine_off.stop()
    return so_far()


def _joined(parts: Sequence[Level]) -> Level:
    first = parts[0]
    samples = tuple(s for p in parts for s in p.samples)
    timed = tuple(t for p in parts for t in p.timed)
    return Level(first.concurrency, first.speculation, samples, timed)


def with_schedule(flavour: Flavour, schedule: list[list[int]], name: str = "scheduled") -> Flavour:
    """`flavour` with `num_speculative_tokens_per_batch_size` added to its speculative config."""
    assert flavour.speculative_config is not None, "a schedule needs speculation"
    config = json.loads(flavour.speculative_config)
    config["num_speculative_tokens_per_batch_size"] = schedule
    text = json.dumps(config, separators=(",", ":"), sort_keys=True)
    return Flavour(name, flavour.model_dir, text, flavour.extra_args)


def say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)
