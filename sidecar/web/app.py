"""The sidecar's one listener: /metrics, /healthz, /readyz, and (added by other modules) /status and the tap.

The app owns the background scrape loop through its lifespan, so starting the server starts measuring and
stopping it (SIGTERM from the kubelet) stops the loop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.control.fleet import FleetSource
from sidecar.core.advice import AdviceConfig, advise_stats, slo_from
from sidecar.core.report import report_body
from sidecar.settings import Settings, host_port
from sidecar.tap.proxy import install_tap
from sidecar.web.status_data import actuator_state_of, install_status
from sidecar.wiring import Sidecar, build_sidecar, tap_config


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
        stats = view.stats if current else None
        # In fleet mode: the fleet's measured speedup, the one the decisions use.
        measured = {m.model_name: sc.measured(m.model_name) for m in stats.models} if stats is not None else {}
        summaries = sc.recorder.bucket_summary()
        config = AdviceConfig(thresholds=sc.monitor.config.thresholds, slo=slo_from(settings.slo))
        advice = advise_stats(stats, summaries, config) if stats is not None else None
        schedules = {m.model_name: sc.schedule(m) for m in stats.models} if stats is not None else {}
        body = report_body(stats, advice, summaries, measured, settings.threshold, schedules=schedules)
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


def install_fleet_api(app: FastAPI, fleet: FleetSource) -> None:
    @app.get("/api/fleet")
    def api_fleet() -> JSONResponse:
        """The numbers the leader decides on (report --json shape under "stats"), whether this replica is the one
        that queries (only the Lease holder does; elsewhere "stats" is null) and the query health."""
        return JSONResponse(fleet.status())
