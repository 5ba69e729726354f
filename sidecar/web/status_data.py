"""GET /status: gathers a :class:`StatusPage` from a running sidecar and serves the page rendered from it.

It reads the sidecar through :class:`RunningSidecar`, a Protocol (the object :mod:`sidecar.wiring` builds
satisfies it), so the page depends on what it reads, not on the app; rendering is
:mod:`sidecar.web.status_page`, pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.control.fleet import FleetSource
from sidecar.core.advice import AdviceConfig, advise_stats, slo_from
from sidecar.core.load_schedule import SchedulePlan
from sidecar.core.stats import ModelStats
from sidecar.core.verdict import Thresholds, verdict
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings
from sidecar.web.status_page import (
    DIVERGENCE_METRICS,
    ActuatorState,
    BucketRow,
    DecisionLike,
    FleetPanel,
    Health,
    StatusPage,
    render_status,
)

if TYPE_CHECKING:
    from fastapi import FastAPI


class RunningSidecar(Protocol):
    """What /status reads from a running sidecar (:class:`sidecar.wiring.Sidecar`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def monitor(self) -> Monitor: ...
    @property
    def fleet(self) -> FleetSource | None: ...
    def schedule(self, model: ModelStats) -> SchedulePlan | None: ...


class TargetLike(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def speculation(self) -> bool: ...


class DecidedLike(Protocol):
    @property
    def detail(self) -> str: ...


class ControllerLike(Protocol):
    """What /status reads from the decision loop (sidecar.control.loop.Controller), without importing it."""

    @property
    def view(self) -> TargetLike | None: ...
    @property
    def last(self) -> DecidedLike | None: ...
    @property
    def actuator(self) -> object: ...
    def decision_state(self) -> str | None: ...


def actuator_state_of(controller: ControllerLike, *, dry_run: bool = False) -> ActuatorState:
    """The decision loop's target and state, for the ``actuator_state`` provider of install_status."""
    view, last = controller.view, controller.last
    suffix = " (dry run: nothing is written)" if dry_run else ""
    if view is None:
        target = str(getattr(controller.actuator, "target", "?"))
        return ActuatorState(target, None, "unknown" + suffix, "the target has not been read yet")
    state = (controller.decision_state() or "unknown") + suffix
    return ActuatorState(view.target, view.speculation, state, last.detail if last is not None else "")


class BucketSource(Protocol):
    def bucket_summary(self) -> Sequence[Any]: ...


def bucket_rows(summaries: Sequence[Any], thresholds: Thresholds) -> tuple[BucketRow, ...]:
    """The tap's BucketSummary objects → table rows with each bucket's share of its model's window requests."""
    totals: dict[str, int] = {}
    for s in summaries:
        totals[s.model_name] = totals.get(s.model_name, 0) + s.window_requests
    rows = []
    for s in summaries:
        total = totals[s.model_name]
        judged = verdict(s.acceptance, float(s.window_draft_tokens), True, thresholds)
        rows.append(
            BucketRow(
                s.model_name,
                s.bucket,
                s.window_requests,
                s.window_requests / total if total else 0.0,
                s.acceptance,
                s.p10,
                s.p50,
                s.p90,
                judged.value,
            )
        )
    return tuple(rows)


def collect(
    sidecar: RunningSidecar,
    *,
    recorder: BucketSource | None,
    decisions: Callable[[], Sequence[DecisionLike]],
    actuator_state: Callable[[], ActuatorState | None],
    now: float,
) -> StatusPage:
    settings, view = sidecar.settings, sidecar.monitor.view
    thresholds = sidecar.monitor.config.thresholds
    # A window older than --stale-after is not shown as the engine's present (the health panel says since when).
    stats = view.stats if view.current(settings.stale_seconds()) else None
    models = stats.models if stats is not None else ()
    # In fleet mode the measured speedup shown is the fleet's, the one the decisions use.
    fleet = sidecar.fleet
    measured = fleet.measured if fleet is not None else view.measured
    speed = fleet.speed if fleet is not None else view.speed
    summaries = list(recorder.bucket_summary()) if recorder is not None else None
    config = AdviceConfig(thresholds=thresholds, slo=slo_from(getattr(settings, "slo", None)))  # slo: optional setting
    advice = advise_stats(stats, summaries or (), config) if stats is not None else ()
    last = view.last_scrape
    detail = last.detail if last and not last.ok else ""
    health = Health(
        settings.vllm_url, stats is not None, last.result if last else None, detail, view.last_success_at,
        dict(view.scrapes),
    )  # fmt: skip
    return StatusPage(
        now=now,
        health=health,
        thresholds=thresholds,
        models=tuple(models),
        advice=advice,
        trend=sidecar.monitor.trend(),
        buckets=bucket_rows(summaries, thresholds) if summaries is not None else None,
        actuator=actuator_state(),
        decisions=tuple(decisions()),
        fleet=fleet_panel(sidecar),
        measured={m.model_name: measured(m.model_name) for m in models},
        speed_samples={m.model_name: speed.samples(m.model_name) for m in models},
        schedules={m.model_name: sidecar.schedule(m) for m in models},
    )


def fleet_panel(sidecar: RunningSidecar) -> FleetPanel | None:
    """Fleet mode's numbers beside the pod's; None when the sidecar is not in fleet mode."""
    fleet = sidecar.fleet
    if fleet is None:
        return None
    stats, last, pod = fleet.stats, fleet.last, sidecar.monitor.view
    models = stats.models if stats is not None else ()
    names = {m.model_name for m in pod.stats.models} if pod.stats is not None else set()
    return FleetPanel(
        source=f"{fleet.query.base_url} {{{fleet.query.selector}}}",
        querying=fleet.querying,
        lease_holder=fleet.lease_holder(),
        last_result=last.result if last else None,
        last_detail=last.detail if last and last.snapshot is None else "",
        window_seconds=stats.window_seconds if stats is not None else None,
        models=tuple(models),
        baseline={m.model_name: fleet.baseline_ratios(m.model_name) for m in models},
        pod_baseline={n: {k: pod.baseline.ratio(n, k) for k in DIVERGENCE_METRICS} for n in names},
    )


def install_status(
    app: FastAPI,
    sidecar: RunningSidecar,
    *,
    recorder: BucketSource | None = None,
    decisions: Callable[[], Sequence[DecisionLike]] = lambda: (),
    actuator_state: Callable[[], ActuatorState | None] = lambda: None,
) -> None:
    from fastapi.responses import HTMLResponse

    @app.get("/status", response_class=HTMLResponse)
    def status() -> HTMLResponse:
        page = collect(sidecar, recorder=recorder, decisions=decisions, actuator_state=actuator_state, now=time.time())
        return HTMLResponse(render_status(page), headers={"Cache-Control": "no-store"})
