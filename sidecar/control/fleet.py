"""Fleet mode: the controller decides on the whole Deployment's numbers, read from Prometheus.

With ``--prometheus-url`` the leader does not judge its own pod: every ``--scrape-interval`` a FleetSource asks
Prometheus for the increases over ``--window`` summed over the Deployment's pods (``--prometheus-selector``),
computes Stats with the same pure core as a local scrape, and hands them to its listeners (the controller).
A round that fails (Prometheus down, an error, a timeout, no series for the selector) hands over nothing: the
controller then decides nothing, exactly as after a failed scrape. Rounds are counted by result.

Only the Lease holder queries. With a Lease (a Kubernetes target), every replica runs this loop, but a replica
that does not hold the Lease asks Prometheus nothing: it only tries for the Lease (through the controller,
throttled to one Lease call per renewal period) every POLL_SECONDS, and the moment it gets the Lease it queries.
A replica that loses the Lease drops its fleet numbers at once (absent, not stale). Without a Lease (a manifest
file, or no target at all) the one sidecar queries, as it always did.

In fleet mode the P99/P50 baseline is learned from the fleet's numbers (while the fleet runs without
speculation), exactly as a pod learns its own: divergence then compares the fleet with the fleet. So is the
measured speedup (sidecar.core.measured_speedup): the fleet's windows with speculation on and off, at matched
load (the fleet's requests running), one sample per ``--window``. A window that may mix both states is never a
sample: none while the Deployment rolls out or before the first read of the target (``settled``, from the
controller's last read), and none until a window after either, or after the fleet's speculation state changed
(old pods' series stay in Prometheus' ``increase`` for a window). The windows travel with each toggle
in the target's record, as a pod's do, because the toggle restarts the leader's pod too.

The local Monitor keeps scraping the pod's own engine for the exporter and /status; /api/fleet shows the
numbers the leader decides on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.adapters.kube.namespace import own_namespace
from sidecar.adapters.prometheus import RESULTS, FleetQuery, FleetResult, query_fleet
from sidecar.core import measured_speedup
from sidecar.core.baseline import MIN_BASELINE_OBSERVATIONS, Baseline, learn
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedHistory
from sidecar.core.report import report_json
from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, Stats, StatsListener, compute_stats
from sidecar.settings import Settings

log = logging.getLogger("spec_sidecar.fleet")

# How often a loop with a Lease looks at its leadership. Cheap: the controller throttles the Lease calls
# themselves to one per renewal period; this only bounds how late a replica that got the Lease starts querying.
POLL_SECONDS = 1.0


class Election(Protocol):
    """The Lease, as the fleet loop needs it (sidecar.control.loop.Controller): only its holder queries Prometheus."""

    def campaign(self, now: float) -> bool: ...
    def lease_holder(self) -> str | None: ...


def default_selector(deployment: str | None, namespace: str | None) -> str:
    """The pods of one Deployment as kube-prometheus labels them: ``<deployment>-<template hash>-<suffix>``.

    Anchored (PromQL regexes are), so Deployment ``llm`` does not take in the pods of ``llm-small``.
    """
    matchers = [f'namespace="{namespace}"'] if namespace else []
    if deployment:
        # Names are DNS-1123 ([a-z0-9.-]): only the dot means something in a regex.
        matchers.append(f'pod=~"{deployment.replace(".", "[.]")}-[a-z0-9]+-[a-z0-9]+"')
    return ",".join(matchers)


def selector_of(settings: Settings) -> str:
    if settings.prometheus_selector is not None:
        return settings.prometheus_selector
    namespace = settings.namespace
    if namespace is None and settings.deployment and not settings.deployment_file:
        namespace = own_namespace()  # the namespace the Kubernetes actuator acts in
    return default_selector(settings.deployment, namespace)


class FleetSource:
    """Owns the fleet's latest Stats and baseline; ``observe`` and ``step_down`` are the whole state transitions,
    easy to drive in tests.

    ``leadership``: the Lease (``elect_by``, when the controller elects); None: this sidecar queries alone.
    """

    def __init__(self, settings: Settings, leadership: Election | None = None) -> None:
        assert settings.prometheus_url, "fleet mode needs --prometheus-url"
        self.settings = settings
        self.leadership = leadership
        self.query = FleetQuery(
            settings.prometheus_url, selector_of(settings), settings.window, settings.scrape_timeout
        )
        self.config = settings.analysis_config()
        self.results: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))
        self.last: FleetResult | None = None
        self.stats: Stats | None = None
        # Configured ratios win over learned ones, as for the pod's own baseline.
        self.baseline = Baseline(configured=dict(settings.baseline_p99_p50))
        self.querying = leadership is None  # until the first look at the Lease, a replica with one does not
        # The fleet's TPOT windows with speculation on and off, for the measured speedup.
        self.speed = SpeedHistory()
        # Whether the target is not rolling out (the controller's last read, set by the wiring; unknown reads as
        # no). Without a target nothing here rolls it out: only the state change below marks a mixed window.
        self.settled: Callable[[], bool] = lambda: True
        self._unsettled_at: float | None = None  # when a window could last have mixed both states
        self._speculating: dict[str, bool] = {}  # model -> whether the last fleet window showed speculation
        self._listeners: list[StatsListener] = []
        self._campaign_failing = False

    def add_listener(self, listener: StatsListener) -> None:
        self._listeners.append(listener)

    def elect_by(self, leadership: Election) -> None:
        """Query only while holding this Lease, from the loop's first look at it on."""
        self.leadership, self.querying = leadership, False

    def observe(self, result: FleetResult) -> Stats | None:
        self.results[result.result] += 1
        if result.snapshot is None:
            if self.last is None or self.last.result != result.result:
                log.warning("fleet query to %s failed: %s (%s)", self.query.base_url, result.result, result.detail)
            self.last, self.stats = result, None
            return None
        if self.last is None or self.last.snapshot is None:
            log.info("fleet numbers from %s for {%s}", self.query.base_url, self.query.selector)
        self.last = result
        self.stats = fleet_stats(result.snapshot, self.query.window, self.config)
        now = result.snapshot.taken_at or time.time()
        self.baseline = learn(self.baseline, self.stats, now, self.settings.window, MIN_BASELINE_OBSERVATIONS)
        if self._single_state(self.stats, now):
            self.speed = measured_speedup.learn(self.speed, self.stats, now, self.settings.window)
        return self.stats

    def _single_state(self, stats: Stats, now: float) -> bool:
        """Whether this window holds one speculation state only: no rollout and no state change in it."""
        speculating = {m.model_name: m.speculation for m in stats.models}
        changed = any(self._speculating.get(name, on) != on for name, on in speculating.items())
        self._speculating.update(speculating)
        if changed or not self.settled():
            self._unsettled_at = now
        return self._unsettled_at is None or now - self._unsettled_at >= self.settings.window

    def measured(self, model: str) -> MeasuredSpeedup | None:
        """The speedup the fleet's latency shows for ``model`` at matched load (None: not comparable yet, or this
        replica does not query: only the Lease holder's numbers are the fleet's)."""
        if not self.querying:
            return None
        return measured_speedup.measure(self.speed.samples(model))

    def breakeven(self, model: str) -> float | None:
        """The measured break-even the policy judges the fleet against, once established (None before)."""
        measured = self.measured(model)
        return measured.policy_threshold if measured is not None else None

    def keep_speed(self, model: str) -> str | None:
        """The fleet's recent TPOT windows as text for the target's record, written with a toggle."""
        return measured_speedup.encode(self.speed, model)

    def restore_speed(self, text: str | None) -> None:
        """Take back the windows the previous leader kept on the target (the controller calls this at its first
        read, from this loop's listener: never while ``observe`` runs)."""
        decoded = measured_speedup.decode(text)
        if decoded is None:
            return
        model, samples = decoded
        log.info("restored %d fleet TPOT windows of model %r from the target's record", len(samples), model)
        self.speed = measured_speedup.with_samples(self.speed, model, samples)

    def step_down(self) -> None:
        """Not (or no longer) the Lease holder: stop querying and drop the fleet numbers, so nothing shows stale."""
        if self.querying:
            log.info("not the Lease holder (%s leads): no fleet queries", self.lease_holder() or "nobody")
        self.querying, self.last, self.stats = False, None, None

    def baseline_ratios(self, model: str) -> dict[str, float | None]:
        """The fleet's P99/P50 baseline per latency metric, for the controller's divergence rule."""
        return {metric: self.baseline.ratio(model, metric) for metric in LATENCY_METRICS}

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        interval = self.settings.scrape_interval
        poll = interval if self.leadership is None else min(interval, POLL_SECONDS)
        due = 0.0  # monotonic time of the next round; a replica that just got the Lease queries at once
        while not stop.is_set():
            if not await self._leads():
                self.step_down()
                due = 0.0
            elif time.monotonic() >= due:
                if not self.querying:
                    log.info("Lease holder: fleet queries to %s every %gs", self.query.base_url, interval)
                self.querying = True
                due = time.monotonic() + interval
                await self._round(client)
            now = time.monotonic()
            delay = max(0.0, min(due, now + poll) - now) if due else poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _leads(self) -> bool:
        leadership = self.leadership
        if leadership is None:
            return True
        try:  # the Kubernetes client blocks
            leads = await asyncio.to_thread(leadership.campaign, time.time())
        except Exception as exc:  # we cannot know that we lead, so we do not
            if not self._campaign_failing:  # once per outage, not once a second
                log.warning("cannot campaign for the Lease: %s: %s", type(exc).__name__, exc)
            self._campaign_failing = True
            return False
        self._campaign_failing = False
        return leads

    async def _round(self, client: httpx.AsyncClient) -> None:
        stats = self.observe(await query_fleet(client, self.query, time.time()))
        if stats is None:
            return
        for listener in self._listeners:
            try:
                await listener(stats)
            except Exception:  # a broken listener must not stop measuring
                log.exception("fleet stats listener failed")

    def lease_holder(self) -> str | None:
        """Who held the Lease at the last look; None without a Lease."""
        return self.leadership.lease_holder() if self.leadership is not None else None

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "querying": self.querying,
            "elected": self.leadership is not None,  # False: no Lease, this sidecar queries alone
            "lease_holder": self.lease_holder(),
            "prometheus_url": self.query.base_url,
            "selector": self.query.selector,
            "queries": dict(self.results),
            "last_result": last.result if last else None,
            "last_detail": last.detail if last else None,
            "stats": report_json(self.stats) if self.stats is not None else None,
            "baseline_p99_p50": baseline_json(self.baseline, self.stats),
            # Windows the measured speedup may use, per model and state (it needs both in one load band).
            "speed_windows": {
                model: {"on": len(self.speed.on.get(model, ())), "off": len(self.speed.off.get(model, ()))}
                for model in sorted(set(self.speed.on) | set(self.speed.off))
            },
        }


def baseline_json(baseline: Baseline, stats: Stats | None) -> dict[str, dict[str, float | None]]:
    """model -> latency metric -> the P99/P50 baseline (configured or learned) for the models in the window."""
    models = [m.model_name for m in stats.models] if stats is not None else sorted(baseline.learned)
    return {model: {metric: baseline.ratio(model, metric) for metric in LATENCY_METRICS} for model in models}


# Prometheus' increase() extrapolates each series to the window's edges on its own, and stops at zero near a
# start: accepted can come out a few percent above drafted (at most the extrapolation, about one scrape
# interval of the window) with no engine having written that. Beyond this, the numbers are impossible.
FLEET_CONSISTENCY_SLACK = 0.1


def fleet_stats(increases: Snapshot, window: float, config: AnalysisConfig) -> Stats:
    """The increases as a window: an empty snapshot ``window`` seconds earlier, then the increases."""
    taken_at = increases.taken_at or 0.0
    start = Snapshot(increases.dialect, {}, taken_at - window)
    return compute_stats([start, increases], replace(config, consistency_slack=FLEET_CONSISTENCY_SLACK))


class FleetCollector(Collector):
    def __init__(self, fleet: FleetSource) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "specdecode_fleet_queries",
            "Rounds of fleet queries to Prometheus by result (every result is present from the start).",
            labels=["result"],
        )
        for result, n in sorted(self._fleet.results.items()):
            queries.add_metric([result], float(n))
        yield queries
        querying = GaugeMetricFamily(
            "specdecode_fleet_querying",
            "1 if this replica queries Prometheus for the fleet (it holds the Lease, or there is no Lease), else 0.",
        )
        querying.add_metric([], 1.0 if self._fleet.querying else 0.0)
        yield querying
