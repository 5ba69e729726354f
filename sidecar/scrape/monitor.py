"""The scrape loop: scrape, keep a window of snapshots, compute Stats, publish an immutable View.

Readers (the exporter, /status, the decision loop) only ever see a complete View swapped in one assignment, so
nothing needs a lock. A failed scrape publishes a View without Stats: derived gauges go absent, not stale; and a
View whose last good scrape is older than --stale-after is not current either (``View.current``), whatever
keeps the loop from publishing a newer one.

The running sidecar parses each scrape and keeps the window of snapshots in a child process (the parse worker,
sidecar/scrape/worker.py), which hands back the window's Stats; what stays here (counts, baseline, trend) is a
few numbers per model, updated on the event loop. ``observe`` does the same in this process, for tests and
simulations. Everything kept is bounded by settings (series per scrape, label bytes, models, trend points) and
what is left out is counted in ``View.dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from sidecar.core import measured_speedup
from sidecar.core.baseline import MIN_BASELINE_OBSERVATIONS, Baseline, learn
from sidecar.core.cost_prior import DraftCost
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedHistory
from sidecar.core.stats import Stats, StatsListener
from sidecar.scrape.fetch import ScrapeBounds, ScrapeResult, describe_failure, fetch
from sidecar.scrape.window import SnapshotWindow, WindowStep
from sidecar.scrape.worker import Job, ParseWorker
from sidecar.settings import Settings

log = logging.getLogger("spec_sidecar.runtime")

# The setting behind each reason something is dropped (specdecode_dropped_total), for the log.
_BOUND_FLAGS = {
    "label_bytes": "--scrape-max-label-bytes",
    "series": "--scrape-max-series",
    "models": "--max-models",
    "trend_points": "--trend-max-points",
}
# How far back /status charts acceptance.
TREND_SECONDS = 3600.0


@dataclass(frozen=True)
class TrendPoint:
    """One model's windowed numbers at one scrape, for charts of the last hour."""

    at: float
    model_name: str
    acceptance_ratio: float | None
    mean_acceptance_length: float | None
    verdict: str


@dataclass(frozen=True)
class View:
    stats: Stats | None = None
    target_up: bool = False
    ready: bool = False
    last_scrape: ScrapeResult | None = None
    last_success_at: float | None = None
    baseline: Baseline = field(default_factory=Baseline)
    scrapes: Mapping[str, int] = field(default_factory=dict)
    bad_lines_total: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)  # totals since start, by reason
    # time.monotonic() when the last good scrape was published: ages are measured on this clock, which neither
    # jumps with the wall clock nor depends on the times a test feeds to observe().
    success_monotonic: float | None = None
    invalid_windows: Mapping[str, int] = field(default_factory=dict)  # published windows per invalid reason
    counter_resets: int = 0  # engine series restarts seen between consecutive scrapes
    # TPOT windows with speculation on and off, for the measured speedup (sidecar.core.measured_speedup).
    speed: SpeedHistory = field(default_factory=SpeedHistory)
    parse_worker_restarts: Mapping[str, int] = field(default_factory=dict)  # by reason: crashed, timeout

    def measured(self, model: str) -> MeasuredSpeedup | None:
        """The speedup this engine's latency shows for ``model`` at matched load (None: not comparable yet)."""
        return measured_speedup.measure(self.speed.samples(model))

    def age(self) -> float | None:
        """Seconds since the last good scrape was published (None: none yet)."""
        return None if self.success_monotonic is None else max(0.0, time.monotonic() - self.success_monotonic)

    def current(self, stale_after: float) -> bool:
        """Whether the window may be shown as the engine's present: last scrape good and not older than
        ``stale_after`` (a scrape loop stuck behind a slow engine or a long parse publishes nothing new)."""
        age = self.age()
        return self.target_up and self.stats is not None and age is not None and age <= stale_after


class Monitor:
    """Owns the window of snapshots; ``observe`` is the whole state transition, easy to drive in tests."""

    def __init__(self, settings: Settings, draft_cost_prior: DraftCost | None = None) -> None:
        self.settings = settings
        self.config = settings.analysis_config(draft_cost_prior) if draft_cost_prior else settings.analysis_config()
        self.view = View(baseline=Baseline(configured=dict(settings.baseline_p99_p50)))
        self.bounds = ScrapeBounds(settings.scrape_max_series, settings.scrape_max_label_bytes, settings.max_models)
        self._window = SnapshotWindow()  # observe's; the running loop's window lives in the parse worker
        self._worker = ParseWorker(settings.scrape_parse_timeout)
        self._scrapes: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._listeners: list[StatsListener] = []
        self._trend: deque[TrendPoint] = deque()
        # What trend() hands out: a tuple rebuilt after each change, so a reader in another thread (/status is
        # served from the thread pool) never iterates the deque while it changes.
        self._trend_view: tuple[TrendPoint, ...] = ()
        self._invalid: Counter[str] = Counter()
        self._resets = 0
        self._invalid_now: dict[str, str] = {}  # model -> reason of its current invalid episode
        self._restarted_at: float | None = None  # when an engine series was last seen restarting

    def set_draft_cost_prior(self, prior: DraftCost) -> None:
        """The c assumed from the speculative config as the target's args say it (read by the controller)."""
        if prior != self.config.draft_cost_prior:
            log.info("draft cost %s (%s)", prior.label, prior.basis)
            self.config = replace(self.config, draft_cost_prior=prior)

    def view_measured(self, model: str) -> MeasuredSpeedup | None:
        """The pod's own measured speedup for ``model`` in the latest View."""
        return self.view.measured(model)

    def keep_speed(self, model: str) -> str | None:
        """This model's recent TPOT windows as text for the target's record (measured_speedup.encode)."""
        return measured_speedup.encode(self.view.speed, model)

    def restore_speed(self, text: str | None) -> None:
        """Take back the TPOT windows a previous sidecar kept on the target (nothing when there are none).

        Called by the controller, which runs after ``observe`` has published its View and before the next scrape
        (the scrape loop awaits its listeners), so the two never replace the View at the same time.
        """
        decoded = measured_speedup.decode(text)
        if decoded is None:
            return
        model, samples = decoded
        log.info("restored %d TPOT windows of model %r from the target's record", len(samples), model)
        self.view = replace(self.view, speed=measured_speedup.with_samples(self.view.speed, model, samples))

    def add_listener(self, listener: StatsListener) -> None:
        self._listeners.append(listener)

    def observe(self, result: ScrapeResult, now: float) -> View:
        """One scrape's whole state transition in this process: the window, then ``publish``."""
        return self.publish(self._window.step(result, now, self.settings.window, self.config), now)

    def publish(self, step: WindowStep, now: float) -> View:
        """The View after a scrape whose window (``step``) is known: counts, baseline, measured speedup, trend."""
        result = step.result
        self._scrapes[result.result] += 1
        self._note_dropped(result.dropped)
        previous = self.view
        bad_total = previous.bad_lines_total + result.bad_lines
        restarts = dict(self._worker.restarts)
        stats = step.stats
        if stats is None:
            self._log_failure(result, previous)
            self.view = View(
                None, False, previous.ready, result, previous.last_success_at, previous.baseline,
                dict(self._scrapes), bad_total, dict(self._dropped), previous.success_monotonic,
                invalid_windows=dict(self._invalid), counter_resets=self._resets, speed=previous.speed,
                parse_worker_restarts=restarts,
            )  # fmt: skip
            return self.view
        if not previous.target_up:
            log.info("engine reachable at %s (engine=%s)", self.settings.vllm_url, step.engine)
        self._resets += step.restarts
        if step.restarts:
            self._restarted_at = now
        self._note_invalid(stats)
        baseline = learn(previous.baseline, stats, now, self.settings.window, MIN_BASELINE_OBSERVATIONS)
        # Only a full window without an engine restart is a sample: one that spans a toggle's restart mixes the
        # latency of both states, one still filling after a start covers less than --window.
        full = stats.window_seconds is not None and stats.window_seconds >= 0.9 * self.settings.window
        full = full and (self._restarted_at is None or now - self._restarted_at > self.settings.window)
        speed = measured_speedup.learn(previous.speed, stats, now, self.settings.window) if full else previous.speed
        self._record_trend(stats, now)
        self.view = View(
            stats, True, True, result, now, baseline, dict(self._scrapes), bad_total, dict(self._dropped),
            time.monotonic(), invalid_windows=dict(self._invalid), counter_resets=self._resets, speed=speed,
            parse_worker_restarts=restarts,
        )  # fmt: skip
        return self.view

    def _note_invalid(self, stats: Stats) -> None:
        """Count every invalid window, and log an episode once: when it starts or its reason changes, and when
        the window is valid again (the bad snapshot has left it)."""
        now: dict[str, str] = {}
        for m in stats.models:
            if m.invalid is None:
                if m.model_name in self._invalid_now:
                    log.info("window of model %r is valid again", m.model_name)
                continue
            self._invalid[m.invalid] += 1
            now[m.model_name] = m.invalid
            if self._invalid_now.get(m.model_name) != m.invalid:
                log.warning(
                    "window of model %r is invalid (%s: %s): no verdict and no decision from it until the bad "
                    "scrape leaves the window; see specdecode_invalid_windows_total",
                    m.model_name, m.invalid, (m.invalid_detail or "")[:300],
                )  # fmt: skip
        self._invalid_now = now

    def trend(self) -> tuple[TrendPoint, ...]:
        """Acceptance per model per scrape over the last TREND_SECONDS, oldest first."""
        return self._trend_view

    def _record_trend(self, stats: Stats, now: float) -> None:
        for m in stats.models:
            point = TrendPoint(now, m.model_name, m.acceptance_ratio, m.mean_acceptance_length, m.verdict.value)
            self._trend.append(point)
        while self._trend and self._trend[0].at < now - TREND_SECONDS:
            self._trend.popleft()
        over = len(self._trend) - self.settings.trend_max_points
        if over > 0:
            # Oldest first: the chart loses its left edge, never the present.
            for _ in range(over):
                self._trend.popleft()
            self._note_dropped({"trend_points": over})
        self._trend_view = tuple(self._trend)

    def _note_dropped(self, dropped: Mapping[str, int]) -> None:
        for reason, count in dropped.items():
            if count and not self._dropped[reason]:
                # Once per reason per process: the counter says how often, the log says that it started.
                flag = _BOUND_FLAGS.get(reason, "")
                bound = getattr(self.settings, flag[2:].replace("-", "_"), "") if flag else ""
                log.warning("dropping %s beyond %s %s; counted in specdecode_dropped_total", reason, flag, bound)
            self._dropped[reason] += count

    def _log_failure(self, result: ScrapeResult, previous: View) -> None:
        # Log transitions, not every failed scrape: an engine down for an hour should not flood the log.
        if previous.target_up or previous.last_scrape is None or previous.last_scrape.result != result.result:
            log.warning("scrape failed (%s): %s", result.result, describe_failure(self.settings.vllm_url, result))

    async def _scrape(self, client: httpx.AsyncClient) -> WindowStep:
        started = time.monotonic()
        s = self.settings
        body = await fetch(client, s.vllm_url, s.scrape_timeout, s.scrape_max_bytes)
        if isinstance(body, ScrapeResult):
            return WindowStep(body)
        job = Job(len(body), time.time(), s.window, self.bounds, self.config)
        step = await self._worker.step(body, started, job)
        # The scrape's duration as this process saw it: the GET, the hand-over and the parse.
        return replace(step, result=replace(step.result, duration_seconds=time.monotonic() - started))

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        interval = self.settings.scrape_interval
        try:
            # Now, not at the first scrape: its start-up is not a scrape's time (if it cannot start, every scrape
            # says so as parse_failed).
            with contextlib.suppress(OSError):
                await self._worker.start()
            while not stop.is_set():
                started = time.monotonic()
                step = await _unless_stopped(self._scrape(client), stop)
                if step is None:
                    break
                view = self.publish(step, time.time())
                if view.stats is not None:
                    for listener in self._listeners:
                        try:
                            await listener(view.stats)
                        except Exception:  # a broken listener must not stop measuring
                            log.exception("stats listener failed")
                delay = max(0.0, interval - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            await self._worker.stop()


async def _unless_stopped(work: Coroutine[Any, Any, WindowStep], stop: asyncio.Event) -> WindowStep | None:
    """``work``'s result, or None as soon as ``stop`` is set (a long parse must not hold up shutdown)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if not task.cancelled() else None
