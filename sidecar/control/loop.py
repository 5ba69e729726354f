"""The decision loop: each new window of Stats -> Observation -> decide -> actuator, with the control metrics.

``Controller.step`` is the whole transition, synchronous and driven by an explicit ``now`` (tests use fake
time); ``Controller.on_stats`` is the Monitor listener that runs it in a worker thread, because the
Kubernetes client blocks. The persisted part of the policy state is read from the target (throttled to one
read per ``read_every`` seconds, and always after a write or a refusal); the in-memory part (trip count)
carries over between steps and restarts from zero whenever the target changed under us.

Wiring (:mod:`sidecar.wiring`): ``controller = build_controller(settings, baseline_for)``; if not None,
``monitor.add_listener(controller.on_stats)``, ``registry.register(ControlCollector(controller))``, and
``await asyncio.to_thread(controller.close)`` when the app stops (hands the Lease over).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core import cost_prior, load_schedule, rollout_watch, schedule_config
from sidecar.core.actuator import ActResult, Actuator, Leadership, Outcome, TargetError, TargetView, needs_redaction
from sidecar.core.cost_prior import SpeculativeSettings
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedSample
from sidecar.core.policy import (
    Action,
    Decision,
    PolicyConfig,
    PolicyState,
    Reason,
    decide,
    observation_from_stats,
)
from sidecar.core.stats import ModelStats, Stats

log = logging.getLogger("spec_sidecar.control")

# Outcomes after which the next step may simply decide again (on a fresh read).
RETRY_NOW = frozenset({Outcome.CONFLICT, Outcome.NOT_LEADER, Outcome.ROLLOUT_PENDING, Outcome.UNCHANGED})
STATES = ("on", "off", "tripping", "cooldown", "trial", "rollout", "latched", "pinned")
Baseline = Callable[[str], Mapping[str, float | None]]
# The measured break-even in force for a model (MeasuredSpeedup.policy_threshold), None while not established.
Breakeven = Callable[[str], float | None]
# The speedup measured for a model (its effective c sizes K for reduce-k), None before any matched load band.
Measured = Callable[[str], MeasuredSpeedup | None]
# Told the speculative settings and target model the target's args name, whenever they change.
SpeculationSink = Callable[[SpeculativeSettings | None, str | None], None]
# The TPOT windows to keep on the target with a toggle (measured_speedup.encode), and where to hand back those a
# previous sidecar kept (once, at the first read: every toggle restarts the pod, and this process with it).
SpeedFor = Callable[[str], str | None]
SpeedRestore = Callable[[str | None], None]
# The TPOT windows the measured speedup uses for a model (both states), for the load schedule (--schedule-k).
SamplesFor = Callable[[str], Sequence[SpeedSample]]


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as /status shows it (it satisfies status_page.DecisionLike)."""

    at: float
    action: str
    reason: str
    detail: str
    outcome: str = ""


class Controller:
    def __init__(
        self,
        actuator: Actuator,
        config: PolicyConfig,
        leadership: Leadership | None = None,
        *,
        model: str | None = None,
        baseline_for: Baseline | None = None,
        breakeven_for: Breakeven | None = None,
        measured_for: Measured | None = None,
        speculation_sink: SpeculationSink | None = None,
        speed_for: SpeedFor | None = None,
        speed_restore: SpeedRestore | None = None,
        samples_for: SamplesFor | None = None,
        read_every: float = 15.0,
        renew_every: float = 5.0,
        keep: int = 50,
        error_backoff: tuple[float, float] = (5.0, 300.0),
        rollout_timeout: float = 1800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # leadership: the Lease the actuator writes under (a Deployment); None: this sidecar alone acts (a file).
        self.actuator, self.config, self.leadership, self.model = actuator, config, leadership, model
        self.baseline_for, self.read_every, self.renew_every, self.clock = baseline_for, read_every, renew_every, clock
        self.breakeven_for, self.speculation_sink = breakeven_for, speculation_sink
        self.measured_for = measured_for
        self._told: tuple[SpeculativeSettings | None, str | None] | None = None
        self.speed_for, self.speed_restore = speed_for, speed_restore
        self.samples_for = samples_for
        self._restored = False
        self._renewed_at: float | None = None
        self.state: PolicyState | None = None
        self.view: TargetView | None = None
        self.last: Decision | None = None
        self.decisions: deque[DecisionRecord] = deque(maxlen=keep)
        self.decision_counts: Counter[tuple[str, str]] = Counter()
        # Both toggles at 0 from the start: a counter series that appears only with its first toggle hides that
        # toggle from increase() and changes() (the dashboard and alerts missed it on a real Prometheus).
        mode = "dry_run" if config.dry_run else "auto"
        self.toggle_counts: Counter[tuple[str, str]] = Counter(
            {
                (str(a), mode): 0
                for a in (
                    Action.DISABLE,
                    Action.ENABLE,
                    *((Action.REDUCE_K,) if config.reduce_k else ()),
                    *((Action.SCHEDULE_K,) if config.schedule_k else ()),
                )
            }
        )
        self.errors: Counter[str] = Counter()
        self._read_at: float | None = None
        self._redaction_noted = False  # a failed or dry-run redaction is logged once, not at every read
        self._backoff_min, self._backoff_max = error_backoff
        self._backoff = 0.0
        self._hold_until = 0.0
        # How long the pods of a written config may take to become ready before it is reverted (0: never).
        self.rollout_timeout = rollout_timeout
        self.rollout_reverts = 0

    async def on_stats(self, stats: Stats) -> None:
        await asyncio.to_thread(self.step, stats, self.clock())

    def step(self, stats: Stats | None, now: float, *, engine_up: bool = True) -> Decision | None:
        self._renew(now)
        view = self._target(now)
        if view is None:
            return None
        if self._watch_rollout(view, now):
            return None  # the target just changed: decide on the next step, on a fresh read
        self._tell_speculation(view)
        if not self._restored:
            self._restored = True
            if self.speed_restore is not None:
                self.speed_restore(view.record.speed)
        state = self._merge(view)
        model = self._pick(stats)
        baseline = self.baseline_for(model.model_name) if model is not None and self.baseline_for else None
        breakeven = self.breakeven_for(model.model_name) if model is not None and self.breakeven_for else None
        measured = self.measured_for(model.model_name) if model is not None and self.measured_for else None
        window = stats.window_seconds if stats is not None else None
        observation = observation_from_stats(
            model,
            engine_up=engine_up,
            window_seconds=window,
            baseline=baseline,
            measured_threshold=breakeven,
            measured=measured,
            schedule=self._schedule(model, view, measured),
        )
        decision = decide(observation, state, self.config, now)
        self.last = decision
        self.decision_counts[(str(decision.action), str(decision.reason))] += 1
        if decision.action is Action.NONE:
            self.state = decision.state
            return decision
        if not decision.write:
            self.state = decision.state
            self.toggle_counts[(str(decision.action), "dry_run")] += 1
            self._remember(decision, now, str(Outcome.DRY_RUN))
            return decision
        if now < self._hold_until:
            self.state = _unapplied(decision, state)  # retried once the error backoff is over
            return decision
        if decision.toggles and model is not None and self.speed_for is not None:
            decision = _keeping_speed(decision, self.speed_for(model.model_name))
        result = self._act(decision)
        self._after(decision, state, result, now)
        return decision

    def close(self) -> None:
        """On shutdown: hand the Lease over at once (the pod is going away, often because of our own toggle)."""
        if self.leadership is not None:
            self.leadership.release()

    # --- internals ---------------------------------------------------------------------------------------

    def _renew(self, now: float) -> None:
        """Keep the Lease while alive, so the leader stays the leader between toggles (and the metric is true)."""
        lease = self.leadership
        if lease is None or (self._renewed_at is not None and now - self._renewed_at < self.renew_every):
            return
        lease.acquire_or_renew()
        self._renewed_at = now

    def _target(self, now: float) -> TargetView | None:
        if self.view is not None and self._read_at is not None and now - self._read_at < self.read_every:
            return self.view
        try:
            self.view = self.actuator.read()
        except TargetError as exc:  # an unreachable API server must not stop measuring
            self.errors[exc.reason] += 1
            log.warning("cannot read %s: %s", self.actuator.target, exc)
            return None
        self._read_at = now
        self._redact(self.view)
        return self.view

    def _redact(self, view: TargetView) -> None:
        """Take credentials out of a removal record an older sidecar wrote (``RemovalRecordRedacted``), at the
        first fresh read that finds one, once: the rewritten record needs no second one. It changes the record
        under the in-memory policy state, which carries over (nothing was decided). Only the Lease holder writes;
        a dry run writes nothing and says so once; a failed write is retried at the next fresh read."""
        if not needs_redaction(view, self.actuator.secret_flags) or not self.is_leader():
            return
        if self.config.dry_run:
            if not self._redaction_noted:
                self._redaction_noted = True
                log.warning(
                    "the removal record on %s holds values of credential flags (an older sidecar's); a dry run "
                    "does not rewrite it: run once without --dry-run, or `spec-sidecar enable`",
                    self.actuator.target,
                )
            return
        result = self.actuator.redact_record()
        if result.outcome is Outcome.CHANGED and result.view is not None:
            if self.state is not None and self.state.record == view.record:
                self.state = replace(self.state, record=result.view.record)
            self.view = result.view
            self._redaction_noted = False
        elif result.outcome is not Outcome.UNCHANGED and not self._redaction_noted:
            self._redaction_noted = True
            log.warning(
                "could not take the credentials out of the removal record on %s (%s: %s); trying again at the "
                "next read",
                self.actuator.target,
                result.outcome,
                result.detail,
            )

    def _watch_rollout(self, view: TargetView, now: float) -> bool:
        """After a config write: revert it if its pods are not ready within the bound, drop the watch once they
        are (sidecar.core.rollout_watch). True if the target was written."""
        if view.watch is None or self.config.dry_run:
            return False
        current = (view.command, view.args)
        progress = rollout_watch.verdict(view.watch, current, view.rollout_complete, now, timeout=self.rollout_timeout)
        if progress is rollout_watch.Progress.PENDING:
            return False
        overdue = progress is rollout_watch.Progress.OVERDUE
        result = self.actuator.revert_rollout(self.rollout_timeout) if overdue else self.actuator.settle_rollout()
        self._read_at = None
        if result.view is not None:
            self.view = result.view
        if result.outcome is not Outcome.CHANGED:
            if result.outcome is Outcome.ERROR:
                self.errors["write_failed"] += 1
            return False
        if overdue:
            self.rollout_reverts += 1
            record = DecisionRecord(now, "revert", "rollout_not_ready", result.detail, str(result.outcome))
            self.decisions.append(record)
            log.error("reverted %s: %s", self.actuator.target, result.detail)
        else:
            log.info("rollout of %s %s: watch dropped", view.watch.action, progress)
        return True

    def _tell_speculation(self, view: TargetView) -> None:
        """Hand on what the target's args say about the drafts (for the assumed draft cost), when it changes.

        While speculation is off the args hold no speculation flags: what was last seen with it on stands.
        """
        if self.speculation_sink is None or not view.speculation:
            return
        told = (cost_prior.speculative_settings(view.flags), cost_prior.target_model(view.command, view.args))
        if told != self._told:
            self._told = told
            self.speculation_sink(*told)

    def _merge(self, view: TargetView) -> PolicyState:
        previous = self.state
        if previous is None or previous.record != view.record or previous.speculation != view.speculation:
            return PolicyState(view.speculation, view.rollout_complete, view.record)
        return replace(previous, rollout_complete=view.rollout_complete)

    def _pick(self, stats: Stats | None) -> ModelStats | None:
        if stats is None or not stats.models:
            return None
        if self.model is not None:
            return stats.model(self.model)
        return next((m for m in stats.models if m.speculation), stats.models[0])

    def _schedule(
        self, model: ModelStats | None, view: TargetView, measured: MeasuredSpeedup | None
    ) -> load_schedule.SchedulePlan | None:
        """The load schedule for the policy (only with --schedule-k: it is not free to compute every step)."""
        if not self.config.schedule_k or model is None or self.samples_for is None:
            return None
        samples = self.samples_for(model.model_name)
        return load_schedule.for_model(samples, model, measured, schedule_config.max_num_seqs(view.command, view.args))

    def _act(self, decision: Decision) -> ActResult:
        reason = str(decision.reason)
        if decision.action is Action.DISABLE:
            return self.actuator.disable(reason, decision)
        if decision.action is Action.ENABLE:
            return self.actuator.enable(reason, decision)
        if decision.action is Action.REDUCE_K:
            return self.actuator.reduce_k(decision.k, reason, decision)
        if decision.action is Action.SCHEDULE_K:
            return self.actuator.schedule_k(decision.schedule, reason, decision)
        return self.actuator.write_record(decision.state.record, str(decision.action), decision)  # latch, record

    def _after(self, decision: Decision, before: PolicyState, result: ActResult, now: float) -> None:
        self._remember(decision, now, str(result.outcome))
        self._read_at = None  # whatever happened, the next step reads the target afresh
        if result.view is not None:
            self.view = result.view  # what /status and the metrics show until then
        if result.outcome is Outcome.CHANGED:
            self.state = decision.state
            self._backoff = 0.0
            if decision.toggles:
                self.toggle_counts[(str(decision.action), "auto")] += 1
            log.info("%s: %s (%s)", decision.action, decision.reason, decision.detail)
            return
        self.state = _unapplied(decision, before)  # not applied: decide again on a fresh read
        if result.outcome in RETRY_NOW:
            if result.outcome is not Outcome.NOT_LEADER:
                log.info("%s not applied (%s): %s", decision.action, result.outcome, result.detail)
            return
        # An error, or a refusal that asking again will not change (not restorable, pinned, latched): back off.
        if result.outcome is Outcome.ERROR:
            self.errors["write_failed"] += 1
        self._backoff = min(max(self._backoff * 2, self._backoff_min), self._backoff_max)
        self._hold_until = now + self._backoff
        log.warning("%s %s: %s; next attempt in %.0fs", decision.action, result.outcome, result.detail, self._backoff)

    def _remember(self, decision: Decision, now: float, outcome: str) -> None:
        self.decisions.append(DecisionRecord(now, str(decision.action), str(decision.reason), decision.detail, outcome))

    # --- for metrics and /status ------------------------------------------------------------------------

    def decision_state(self) -> str | None:
        view, last = self.view, self.last
        if view is None:
            return None
        if view.record.pin is not None:
            return "pinned"
        if view.record.latched:
            return "latched"
        if not view.rollout_complete:
            return "rollout"
        reason = last.reason if last is not None else None
        if reason is Reason.TRIAL_RUNNING:
            return "trial"
        if reason is Reason.COOLDOWN and view.speculation:
            return "cooldown"
        if self.state is not None and self.state.trip_count > 0 and view.speculation:
            return "tripping"
        return "on" if view.speculation else "off"

    def settled(self) -> bool:
        """True if the last read found the target's rollout complete; False before any read (not known)."""
        return self.view is not None and self.view.rollout_complete

    def actuator_errors(self) -> Counter[str]:
        errors = Counter(self.errors)
        errors.update(self.actuator.errors)
        return errors

    def is_leader(self) -> bool:
        return True if self.leadership is None else self.leadership.is_leader

    # --- leadership, for work only the Lease holder does (fleet mode's Prometheus queries) ----------------

    @property
    def elects(self) -> bool:
        """True if this sidecar takes part in a Lease election; without one (a manifest), it alone acts."""
        return self.leadership is not None

    def campaign(self, now: float) -> bool:
        """Take or keep the Lease if a renewal is due (throttled as in ``step``); True if this sidecar leads."""
        self._renew(now)
        return self.is_leader()

    def lease_holder(self) -> str | None:
        """Who held the Lease at this sidecar's last look (None: nobody, no Lease, or not read yet)."""
        return self.leadership.holder if self.leadership is not None else None


def _keeping_speed(decision: Decision, speed: str | None) -> Decision:
    """The toggle with the TPOT windows written in the same patch (kept as they were when there are none)."""
    if speed is None:
        return decision
    record = replace(decision.state.record, speed=speed)
    return replace(decision, state=replace(decision.state, record=record))


def _unapplied(decision: Decision, before: PolicyState) -> PolicyState:
    """The in-memory state after a write that did not land: what the policy says to keep (a passed trial whose
    record is still to be written), else the state the decision was made on. If the target's record changed
    meanwhile, the next read starts from it afresh anyway (``_merge``)."""
    return decision.unapplied if decision.unapplied is not None else before


class ControlCollector(Collector):
    """The control families of docs/metrics.md, built from the controller at collection time."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def collect(self) -> Iterator[Metric]:
        c = self._controller
        current = c.decision_state()
        if current is not None:
            state = GaugeMetricFamily(
                "specdecode_decision_state", "1 for the controller's current state, 0 for the others.", labels=["state"]
            )
            for name in STATES:
                state.add_metric([name], 1.0 if name == current else 0.0)
            yield state
        decisions = CounterMetricFamily(
            "specdecode_decisions", "Policy decisions by action and reason.", labels=["decision", "reason"]
        )
        for (action, reason), n in sorted(c.decision_counts.items()):
            decisions.add_metric([action, reason], float(n))
        yield decisions
        toggles = CounterMetricFamily(
            "specdecode_toggles", "Toggles written (auto) or only decided (dry_run).", labels=["action", "mode"]
        )
        for (action, mode), n in sorted(c.toggle_counts.items()):
            toggles.add_metric([action, mode], float(n))
        yield toggles
        errors = CounterMetricFamily(
            "specdecode_actuator_errors", "Actuator errors by reason (retried or not).", labels=["reason"]
        )
        for reason, n in sorted(c.actuator_errors().items()):
            errors.add_metric([reason], float(n))
        yield errors
        reverts = CounterMetricFamily(
            "specdecode_rollout_reverts",
            "Config writes this sidecar put back because their pods were not ready within --rollout-timeout.",
        )
        reverts.add_metric([], float(c.rollout_reverts))
        yield reverts
        if c.view is not None:
            reverted = GaugeMetricFamily(
                "specdecode_rollout_reverted",
                "1 while the target is latched because a written config's pods were not ready and it was reverted.",
            )
            reverted.add_metric([], 1.0 if rollout_watch.is_revert_latch(c.view.record.latched) else 0.0)
            yield reverted
        leader = GaugeMetricFamily("specdecode_leader", "1 if this sidecar may write to the target.")
        leader.add_metric([], 1.0 if c.is_leader() else 0.0)
        yield leader
        changed = c.view.record.changed_at if c.view is not None else None
        if changed is not None:
            last = GaugeMetricFamily(
                "specdecode_last_toggle_timestamp_seconds", "Unix time of the last toggle recorded on the target."
            )
            last.add_metric([], changed)
            yield last
