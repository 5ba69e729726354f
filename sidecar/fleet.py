"""Fleet mode: the controller decides on the whole Deployment's numbers, read from Prometheus.

With ``--prometheus-url`` the leader does not judge its own pod: every ``--scrape-interval`` a FleetSource asks
Prometheus for the increases over ``--window`` summed over the Deployment's pods (``--prometheus-selector``),
computes Stats with the same pure core as a local scrape, and hands them to its listeners (the controller).
A round that fails (Prometheus down, an error, a timeout, no series for the selector) hands over nothing: the
controller then decides nothing, exactly as after a failed scrape. Rounds are counted by result.

The local Monitor keeps scraping the pod's own engine for the exporter and /status; /api/fleet shows the
numbers the leader decides on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.adapters.prometheus import RESULTS, FleetQuery, FleetResult, query_fleet
from sidecar.control import own_namespace
from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, Stats, compute_stats
from sidecar.report import report_json
from sidecar.runtime import StatsListener
from sidecar.settings import Settings

log = logging.getLogger("spec_sidecar.fleet")


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
    """Owns the fleet's latest Stats; ``observe`` is the whole state transition, easy to drive in tests."""

    def __init__(self, settings: Settings) -> None:
        assert settings.prometheus_url, "fleet mode needs --prometheus-url"
        self.settings = settings
        self.query = FleetQuery(
            settings.prometheus_url, selector_of(settings), settings.window, settings.scrape_timeout
        )
        self.config = settings.analysis_config()
        self.results: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))
        self.last: FleetResult | None = None
        self.stats: Stats | None = None
        self._listeners: list[StatsListener] = []

    def add_listener(self, listener: StatsListener) -> None:
        self._listeners.append(listener)

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
        return self.stats

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        interval = self.settings.scrape_interval
        while not stop.is_set():
            started = time.monotonic()
            stats = self.observe(await query_fleet(client, self.query, time.time()))
            if stats is not None:
                for listener in self._listeners:
                    try:
                        await listener(stats)
                    except Exception:  # a broken listener must not stop measuring
                        log.exception("fleet stats listener failed")
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "prometheus_url": self.query.base_url,
            "selector": self.query.selector,
            "queries": dict(self.results),
            "last_result": last.result if last else None,
            "last_detail": last.detail if last else None,
            "stats": report_json(self.stats) if self.stats is not None else None,
        }


def fleet_stats(increases: Snapshot, window: float, config: AnalysisConfig) -> Stats:
    """The increases as a window: an empty snapshot ``window`` seconds earlier, then the increases."""
    taken_at = increases.taken_at or 0.0
    start = Snapshot(increases.dialect, {}, taken_at - window)
    return compute_stats([start, increases], config)


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


def install_fleet_api(app: FastAPI, fleet: FleetSource) -> None:
    @app.get("/api/fleet")
    def api_fleet() -> JSONResponse:
        """The numbers the leader decides on (report --json shape under "stats") and the query health."""
        return JSONResponse(fleet.status())
