"""The composition root: builds one running sidecar (scrape loop, collectors, tap recorder, controller, fleet
loop) from Settings.

This is the only module that knows every capability package; they never import each other or anything above
them (import-linter's layers, docs/architecture.md). The web app (:mod:`sidecar.web.app`) serves what is built
here, and the CLI (:mod:`sidecar.cli.main`) starts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry

from sidecar.adapters.kube.namespace import own_namespace
from sidecar.adapters.model_config import configured_draft_cost_prior, draft_cost_prior
from sidecar.control.fleet import FleetCollector, FleetSource
from sidecar.control.loop import (
    Baseline,
    Breakeven,
    ControlCollector,
    Controller,
    Measured,
    SamplesFor,
    SpeculationSink,
    SpeedFor,
    SpeedRestore,
)
from sidecar.core import load_schedule, schedule_config
from sidecar.core.actuator import Actuator, Leadership
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.forward_paths import parse_forward_paths
from sidecar.core.load_schedule import SchedulePlan
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedSample
from sidecar.core.policy import PolicyConfig, TrialConfig
from sidecar.core.stats import ModelStats
from sidecar.core.temperature import TemperatureBuckets, parse_edges
from sidecar.scrape.collector import ScrapeCollector
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings, TargetSettings
from sidecar.tap.proxy import TapConfig
from sidecar.tap.recorder import TapRecorder


@dataclass
class Sidecar:
    """Everything one running sidecar holds; handed to route modules so they need no globals."""

    settings: Settings
    monitor: Monitor
    registry: CollectorRegistry
    recorder: TapRecorder
    controller: Controller | None = None
    fleet: FleetSource | None = None  # fleet mode (--prometheus-url): the controller's source of Stats

    def measured(self, model: str) -> MeasuredSpeedup | None:
        """The measured speedup the sidecar decides on: the fleet's in fleet mode (its Lease holder's), else
        the pod's own."""
        return self.fleet.measured(model) if self.fleet is not None else self.monitor.view_measured(model)

    def max_num_seqs(self) -> int | None:
        """The engine's --max-num-seqs as the target's args set it (None: not set, or no target read yet)."""
        view = self.controller.view if self.controller is not None else None
        return schedule_config.max_num_seqs(view.command, view.args) if view is not None else None

    def schedule(self, model: ModelStats) -> SchedulePlan | None:
        """The load schedule proposed for ``model`` from the windows the measured speedup uses (the fleet's in
        fleet mode), None with speculation off."""
        return self.schedule_given(model, self.measured(model.model_name))

    def schedule_given(self, model: ModelStats, measured: MeasuredSpeedup | None) -> SchedulePlan | None:
        """The same, with the model's measured speedup already pooled (the exporter pools it once per collection)."""
        speed = self.fleet.speed if self.fleet is not None else self.monitor.view.speed
        return load_schedule.for_model(speed.samples(model.model_name), model, measured, self.max_num_seqs())

    def speculative_tokens(self) -> int | None:
        """k as the engine reports it (per-position counters), for the tap's chunk estimate."""
        stats = self.monitor.view.stats
        return (
            next((m.num_speculative_tokens for m in stats.models if m.num_speculative_tokens), None) if stats else None
        )


def build_sidecar(settings: Settings) -> Sidecar:
    monitor = Monitor(settings, configured_draft_cost_prior(settings.speculative_config, settings.target_model))
    registry = CollectorRegistry(auto_describe=False)
    fleet = FleetSource(settings) if settings.prometheus_url else None
    # Fleet mode exports, shows and decides on the fleet's measured speedup (the Lease holder's), a pod on its own.
    measured = fleet.measured if fleet else monitor.view_measured
    built: list[Sidecar] = []  # the schedule's --max-num-seqs comes from the controller's read of the target
    registry.register(
        ScrapeCollector(
            lambda: monitor.view,
            settings.stale_seconds(),
            measured,
            schedule=lambda model, speed: built[0].schedule_given(model, speed) if built else None,
        )
    )
    recorder = TapRecorder(window_seconds=settings.bucket_window)
    registry.register(recorder.collector())
    # Fleet mode judges the fleet's P99/P50 against the fleet's baseline and its acceptance against the fleet's
    # measured break-even; a pod judges its own. The TPOT windows travel with each toggle either way.
    controller = build_controller(
        settings,
        fleet.baseline_ratios if fleet else lambda model: _baseline(monitor, model),
        breakeven_for=fleet.breakeven if fleet else lambda model: _breakeven(monitor, model),
        measured_for=fleet.measured if fleet else lambda model: _measured(monitor, model),
        # --speculative-config, when given, says what the engine runs; otherwise the target's args do.
        speculation_sink=None
        if settings.speculative_config
        else lambda spec, target: monitor.set_draft_cost_prior(draft_cost_prior(spec, target)),
        speed_for=fleet.keep_speed if fleet else monitor.keep_speed,
        speed_restore=fleet.restore_speed if fleet else monitor.restore_speed,
        samples_for=partial(_fleet_samples, fleet) if fleet else partial(_samples, monitor),
    )
    if fleet is not None:
        registry.register(FleetCollector(fleet))
        if controller is not None:
            fleet.settled = controller.settled  # no fleet window is a sample while the target rolls out
            if controller.elects:
                fleet.elect_by(controller)  # only the Lease holder queries Prometheus
    if controller is not None:
        (fleet or monitor).add_listener(controller.on_stats)
        registry.register(ControlCollector(controller))
    sidecar = Sidecar(settings, monitor, registry, recorder, controller, fleet)
    built.append(sidecar)
    return sidecar


def _breakeven(monitor: Monitor, model: str) -> float | None:
    measured = monitor.view_measured(model)
    return measured.policy_threshold if measured is not None else None


def _measured(monitor: Monitor, model: str) -> MeasuredSpeedup | None:
    return monitor.view.measured(model)  # the view is replaced at every scrape: read it when asked


def _samples(monitor: Monitor, model: str) -> tuple[SpeedSample, ...]:
    return monitor.view.speed.samples(model)  # the view is replaced at every scrape: read it when asked


def _fleet_samples(fleet: FleetSource, model: str) -> tuple[SpeedSample, ...]:
    return fleet.speed.samples(model)  # replaced at every round, as the view


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
        speculative_tokens=sidecar.speculative_tokens,
    )


# --- the decision loop and its target ----------------------------------------------------------------------


def policy_config(settings: Settings) -> PolicyConfig:
    """The sidecar's Settings onto the pure policy config."""
    trial = (
        TrialConfig(after=settings.trial_after, max_tries=settings.trial_max_tries)
        if settings.trial_after is not None
        else None
    )
    return PolicyConfig(
        threshold=settings.threshold,
        evidence_z=settings.evidence_z,
        spread_min=settings.warmup_windows,
        hysteresis=settings.hysteresis,
        min_draft_tokens=float(settings.min_draft_tokens),
        trip_windows=settings.trip_windows,
        window_seconds=settings.window,
        cooldown=settings.cooldown,
        manual_grace=settings.manual_grace,
        flap_budget=settings.flap_budget,
        flap_period=settings.flap_period,
        breakeven_rule=settings.breakeven_rule,
        measured_breakeven=settings.measured_breakeven,
        divergence_factor=settings.divergence_factor,
        trial=trial,
        dry_run=settings.dry_run,
        reduce_k=settings.reduce_k,
        schedule_k=settings.schedule_k,
    )


@dataclass(frozen=True)
class Target:
    """What the sidecar acts on, and the Lease it acts under (None: no election, this sidecar alone acts)."""

    actuator: Actuator
    leadership: Leadership | None = None


def build_target(settings: TargetSettings, *, elect: bool) -> Target | None:
    """The target named by the settings, or None (measure only). ``elect``: take part in leader election."""
    secrets = settings.secret_flag_list()
    if settings.deployment_file:
        from sidecar.adapters.manifest import ManifestActuator

        return Target(
            ManifestActuator(
                settings.deployment_file,
                container=settings.container,
                deployment=settings.deployment,
                secret_flags=secrets,
            )
        )
    if not settings.deployment:
        return None
    # Imported here: the Kubernetes client takes a while to import, and a manifest or no target never needs it.
    from sidecar.adapters.kube.actuator import KubeActuator
    from sidecar.adapters.kube.client import api_client
    from sidecar.adapters.kube.lease import LeaseElector

    namespace = settings.namespace or own_namespace()
    identity = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "spec-sidecar"
    api = api_client(kubeconfig=settings.kubeconfig, host=settings.kube_host)
    elector = (
        LeaseElector(api, namespace=namespace, name=f"{settings.deployment}-spec-sidecar", identity=identity)
        if elect
        else None
    )
    actuator = KubeActuator(
        api,
        namespace=namespace,
        deployment=settings.deployment,
        container=settings.container,
        identity=identity,
        elector=elector,
        secret_flags=secrets,
    )
    return Target(actuator, elector)


def build_actuator(settings: TargetSettings, *, elect: bool) -> Actuator | None:
    """The target's actuator alone (the CLI's status, enable and disable, which never elect)."""
    target = build_target(settings, elect=elect)
    return target.actuator if target is not None else None


def build_controller(
    settings: Settings,
    baseline_for: Baseline | None = None,
    *,
    breakeven_for: Breakeven | None = None,
    measured_for: Measured | None = None,
    speculation_sink: SpeculationSink | None = None,
    speed_for: SpeedFor | None = None,
    speed_restore: SpeedRestore | None = None,
    samples_for: SamplesFor | None = None,
) -> Controller | None:
    target = build_target(settings, elect=True)
    if target is None:
        return None
    return Controller(
        target.actuator,
        policy_config(settings),
        target.leadership,
        baseline_for=baseline_for,
        breakeven_for=breakeven_for,
        measured_for=measured_for,
        speculation_sink=speculation_sink,
        speed_for=speed_for,
        speed_restore=speed_restore,
        samples_for=samples_for,
        rollout_timeout=settings.rollout_timeout,
    )
