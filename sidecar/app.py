"""The sidecar's one listener: /metrics, /healthz, /readyz, and (added by other modules) /status and the tap.

The app owns the background scrape loop through its lifespan, so starting the server starts measuring and
stopping it (SIGTERM from the kubelet) stops the loop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.control import ControlCollector, Controller, build_controller
from sidecar.core.advice import AdviceConfig, advice_json, advise_stats, slo_from
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.forward_paths import parse_forward_paths
from sidecar.core.temperature import TemperatureBuckets, parse_edges
from sidecar.exporter import ScrapeCollector
from sidecar.fleet import FleetCollector, FleetSource, install_fleet_api
from sidecar.report import bucket_json, report_json
from sidecar.runtime import Monitor
from sidecar.settings import Settings, host_port
from sidecar.status_page import actuator_state_of, install_status
from sidecar.tap import TapConfig, install_tap
from sidecar.tap_metrics import TapRecorder


class SidecarApp(FastAPI):
    """FastAPI for the sidecar's own routes; requests under ``/v1/`` (the OpenAI API, never one of ours) go
    straight to the tap. FastAPI's middleware stack (error and exception handlers, body limit, telemetry checks
    that read the environment) costs about 0.5 ms per request and wraps every ``send`` of a stream; a proxy
    whose job is to add nothing cannot carry that on its hot path (docs/benchmarks.md, "Tap").

    With ``own_port`` (``--metrics-listen``) the app listens on two ports: requests that came in on that port
    get the sidecar's own routes and nothing else (the tap is not mounted), requests on any other port go to the
    tap whatever their path, so the API port answers nothing of the sidecar's and the metrics port forwards
    nothing to vLLM."""

    fast_lane: ASGIApp | None = None
    own_port: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.fast_lane
        if lane is not None and scope["type"] != "lifespan":
            own = self.own_port
            if own is None:
                if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                    await lane(scope, receive, send)
                    return
            elif (scope.get("server") or ("", None))[1] != own:
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@dataclass
class Sidecar:
    """Everything one running sidecar holds; handed to route modules so they need no globals."""

    settings: Settings
    monitor: Monitor
    registry: CollectorRegistry
    recorder: TapRecorder
    controller: Controller | None = None
    fleet: FleetSource | None = None  # fleet mode (--prometheus-url): the controller's source of Stats

    def speculative_tokens(self) -> int | None:
        """k as the engine reports it (per-position counters), for the tap's chunk estimate."""
        stats = self.monitor.view.stats
        return (
            next((m.num_speculative_tokens for m in stats.models if m.num_speculative_tokens), None) if stats else None
        )


def build_sidecar(settings: Settings) -> Sidecar:
    monitor = Monitor(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(lambda: monitor.view, settings.stale_seconds()))
    recorder = TapRecorder(window_seconds=settings.bucket_window)
    registry.register(recorder.collector())
    fleet = FleetSource(settings) if settings.prometheus_url else None
    # Fleet mode judges the fleet's P99/P50 against the fleet's baseline, a pod against its own.
    controller = build_controller(settings, fleet.baseline_ratios if fleet else lambda model: _baseline(monitor, model))
    if fleet is not None:
        registry.register(FleetCollector(fleet))
        if controller is not None and controller.elects:
            fleet.elect_by(controller)  # only the Lease holder queries Prometheus
    if controller is not None:
        (fleet or monitor).add_listener(controller.on_stats)
        registry.register(ControlCollector(controller))
    return Sidecar(settings, monitor, registry, recorder, controller, fleet)


def _baseline(monitor: Monitor, model: str) -> dict[str, float | None]:
    return {metric: monitor.view.baseline.ratio(model, metric) for metric in LATENCY_METRICS}


def tap_config(settings: Settings, sidecar: Sidecar) -> TapConfig:
    return TapConfig(
        upstream_url=settings.vllm_url,
        max_body_bytes=settings.tap_max_body_bytes,
        temperature_buckets=TemperatureBuckets(parse_edges(settings.temperature_buckets)),
        ask_for_usage=settings.tap_ask_for_usage,
        upstream_idle_seconds=settings.tap_upstream_idle,
        forward_paths=parse_forward_paths(settings.tap_forward_paths),
        estimate_from_chunks=settings.tap_estimate_from_chunks,
        window_seconds=settings.bucket_window,
        speculative_tokens=sidecar.speculative_tokens,
    )


def create_app(settings: Settings, sidecar: Sidecar | None = None) -> FastAPI:
    sc = sidecar or build_sidecar(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        async with httpx.AsyncClient() as client:
            tasks = [asyncio.create_task(sc.monitor.run(client, stop), name="scrape-loop")]
            if sc.fleet is not None:
                tasks.append(asyncio.create_task(sc.fleet.run(client, stop), name="fleet-loop"))
            try:
                yield
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=settings.scrape_timeout + 5)
                if sc.controller is not None:
                    # Hand the Lease over now: a toggle restarts this pod, and the successor should not wait.
                    await asyncio.to_thread(sc.controller.close)

    app = SidecarApp(title="spec-sidecar", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sidecar = sc

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(sc.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        # Liveness never depends on the engine: a slow-starting GPU engine must not get the sidecar killed.
        # async: answered on the event loop itself, not after a hop through the thread pool, whose threads
        # queue for the GIL behind a parse in progress.
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        view = sc.monitor.view
        if view.ready:
            return JSONResponse({"status": "ready", "target_up": view.target_up})
        detail = view.last_scrape.detail if view.last_scrape else "no scrape yet"
        return JSONResponse({"status": "waiting for the first good scrape", "detail": detail}, status_code=503)

    @app.get("/api/report")
    def api_report() -> JSONResponse:
        """The current window in the `report --json` shape, plus health: for scripts, the demo and /status."""
        view = sc.monitor.view
        current = view.current(settings.stale_seconds())
        body = report_json(view.stats) if view.stats is not None and current else {"engine": None, "models": []}
        summaries = sc.recorder.bucket_summary()
        if view.stats is not None and current:
            config = AdviceConfig(thresholds=sc.monitor.config.thresholds, slo=slo_from(settings.slo))
            body["advice"] = [advice_json(a) for a in advise_stats(view.stats, summaries, config)]
        body["buckets"] = [bucket_json(b) for b in summaries]
        body["bucket_window_seconds"] = settings.bucket_window
        body["target_up"] = current
        body["last_scrape"] = view.last_scrape.result if view.last_scrape else None
        body["last_scrape_age_seconds"] = view.age()
        return JSONResponse(body)

    if sc.fleet is not None:
        install_fleet_api(app, sc.fleet)
    controller = sc.controller
    install_status(
        app,
        sc,
        recorder=sc.recorder,
        decisions=lambda: tuple(controller.decisions) if controller else (),
        actuator_state=lambda: actuator_state_of(controller, dry_run=settings.dry_run) if controller else None,
    )
    # Last: the tap takes every path not routed above (/v1/* observed, everything else passed through), unless
    # the sidecar's routes have a listener of their own: then only the other port reaches the tap.
    own = settings.metrics_listen
    app.fast_lane = install_tap(app, tap_config(settings, sc), sc.recorder, mount=own is None)
    app.own_port = host_port(own)[1] if own is not None else None
    return app
