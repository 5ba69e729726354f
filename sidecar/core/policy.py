"""When to turn speculation off, and back on: ``decide(observation, state, config, now) -> Decision``.

Pure and clock-free: time comes in as ``now`` (epoch seconds), the persisted part of the state comes from the
Deployment's annotations (:mod:`sidecar.core.annotations`), the rest (trip counter) lives in memory and is lost
on restart, which only makes the sidecar more patient.

Order of precedence, first match wins:
  1. a user pin (``spec-sidecar.io/pin``) always wins, and is enforced;
  2. nothing while a rollout is in progress;
  3. nothing once latched by the flap budget, until a human clears the latch;
  4. speculation off: hold, or start a timed trial when one is due (an engine that reports speculation with
     no flag in its args is judged as on; the disable it may ask for is refused by the actuator);
  5. speculation on: judge the window (enough evidence? each enabled rule), count consecutive failing
     windows, and disable after ``trip_windows``, unless inside the cooldown, the grace after a manual enable,
     or the flap budget says latch instead. With ``reduce_k``, a smaller num_speculative_tokens replaces the
     disable when the first positions still pay on their own (sidecar.core.right_size_k), once per record.
     With ``schedule_k``, a measured load schedule (sidecar.core.load_schedule: speculation pays at low load and
     hurts at high load, each with 95 % confidence) is written as num_speculative_tokens_per_batch_size, once
     per record, before any disable or reduce-k and also while the windows pass (the acceptance rule cannot see
     load), under the same cooldown, manual grace and flap budget.
     During a timed trial, the window must clear threshold +
     hysteresis instead; a trial that passes asks for its pass to be recorded on the target (``RECORD``), so
     that a restarted sidecar does not judge it again at the trial's stricter bar.
Every decision carries a :class:`Reason` (a Prometheus label value) and a sentence for people.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sidecar.core.annotations import By, ControlRecord, stored_time
from sidecar.core.baseline import divergence
from sidecar.core.load_schedule import SchedulePlan, ScheduleSource
from sidecar.core.measured_speedup import MeasuredSpeedup
from sidecar.core.right_size_k import KOption, RightSize, for_model, reduce_instead_of_disable
from sidecar.core.stats import ModelStats


class Action(StrEnum):
    NONE = "none"
    DISABLE = "disable"
    ENABLE = "enable"
    LATCH = "latch"  # write the latch annotation only; args untouched
    RECORD = "record"  # write the control record only (a passed trial); args untouched, so no rollout
    REDUCE_K = "reduce-k"  # lower num_speculative_tokens in the speculative config; speculation stays on
    SCHEDULE_K = "schedule-k"  # write num_speculative_tokens_per_batch_size: K at low load, 0 above the cut


class Reason(StrEnum):
    # why a window fails (and so why speculation goes off)
    LOW_ACCEPTANCE = "low_acceptance"
    BELOW_BREAKEVEN = "below_breakeven"
    LATENCY_DIVERGENCE = "latency_divergence"
    # no action: not enough to judge
    ENGINE_DOWN = "engine_down"
    NO_DATA = "no_data"
    INVALID_WINDOW = "invalid_window"  # numbers no engine can produce: treated as no data, whatever they say
    SMALL_WINDOW = "small_window"
    WINDOW_FILLING = "window_filling"
    WARMING_UP = "warming_up"  # not enough earlier windows to know the noise yet
    AWAITING_WINDOW = "awaiting_window"  # this window overlaps the last one counted
    # no action: judged
    HEALTHY = "healthy"
    INCONCLUSIVE = "inconclusive"
    TRIPPING = "tripping"
    # no action: held back
    COOLDOWN = "cooldown"
    MANUAL_GRACE = "manual_grace"
    ROLLOUT_IN_PROGRESS = "rollout_in_progress"
    LATCHED = "latched"
    SPECULATION_OFF = "speculation_off"
    TRIALS_EXHAUSTED = "trials_exhausted"
    # toggles and their outcomes
    PINNED_ON = "pinned_on"
    PINNED_OFF = "pinned_off"
    FLAP_BUDGET = "flap_budget_exhausted"
    TRIAL_START = "trial_start"
    TRIAL_RUNNING = "trial_running"
    TRIAL_PASSED = "trial_passed"
    TRIAL_FAILED = "trial_failed"
    # a load schedule written while the windows pass (one written on a trip carries the trip's reason)
    LOAD_SCHEDULE = "load_schedule"


@dataclass(frozen=True)
class TrialConfig:
    """Re-enable a while after the sidecar turned speculation off; keep it only if the next windows pass."""

    after: float = 1800.0  # seconds off before the first trial
    backoff: float = 2.0  # each failed trial multiplies the wait
    max_wait: float = 24 * 3600.0
    max_tries: int = 3  # consecutive failed trials before giving up (a human can always enable)
    windows: int = 3  # windows that must pass (>= threshold + hysteresis) to keep speculation on


@dataclass(frozen=True)
class PolicyConfig:
    """Every number the policy uses. Defaults are the ones docs/policy.md measures."""

    threshold: float = 0.5  # acceptance ratio below which a window fails
    # A window fails only when its ratio is below the threshold by more than this many standard errors of
    # the ratio (estimated from the window itself); 0 is the bare comparison. See docs/policy.md.
    evidence_z: float = 2.0
    # The standard error is at least the spread of the ratios of the last spread_windows windows: it sees
    # what the counters cannot, requests that differ from each other (a temperature mix). It is estimated
    # from successive differences and taken as of the last passing window, so a drop does not widen it.
    # 60 rather than 30: from 30 windows of all-or-nothing traffic the estimate is itself too noisy (when it
    # comes out low, a run of ordinary low windows trips; docs/policy.md measures both).
    # Warm-up: no window can fail until the spread rests on spread_min windows (a spread kept from a younger
    # passing window gives way to the spread of every window so far, so a drop right after a start still
    # trips once enough windows are in). Off by default so that callers act from the first windows;
    # 15 spares all-or-nothing traffic the trips right after a start (docs/policy.md).
    spread_windows: int = 60
    spread_min: int = 0
    hysteresis: float = 0.05  # a trial keeps speculation only at >= threshold + hysteresis
    min_draft_tokens: float = 200.0  # a window with fewer draft tokens is no evidence either way
    trip_windows: int = 3  # consecutive failing windows before disabling
    window_seconds: float = 60.0  # length of one window; counted windows never overlap
    cooldown: float = 600.0  # seconds after any toggle with no automatic toggle
    manual_grace: float = 3600.0  # seconds a manual enable is left alone
    flap_budget: int = 4  # automatic toggles allowed per flap_period; one more latches
    flap_period: float = 6 * 3600.0
    breakeven_rule: bool = False  # also fail windows with L < 1 + k·c
    # Judge against the break-even acceptance measured from this deployment's latency once it is established
    # (sidecar.core.measured_speedup); until then, and with False, against ``threshold``.
    measured_breakeven: bool = True
    divergence_factor: float | None = None  # also fail windows with P99/P50 > factor × baseline
    divergence_metrics: tuple[str, ...] = ("tpot", "e2e")
    trial: TrialConfig | None = None  # timed re-enable; off by default
    # Lower num_speculative_tokens instead of disabling when the first positions still pay (docs/policy.md,
    # 'Reduce K before disable'); opt-in, since it rewrites the engine's speculative config.
    reduce_k: bool = False
    # Write a measured load schedule of K (docs/policy.md, 'The load-aware schedule'); opt-in for the same reason.
    schedule_k: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class Observation:
    """What the policy needs from one window of one model, and nothing more."""

    engine_up: bool
    speculation: bool
    acceptance_ratio: float | None = None
    draft_tokens: float | None = None
    drafts: float | None = None
    position_acceptance: tuple[float, ...] = ()
    mean_acceptance_length: float | None = None
    num_speculative_tokens: int | None = None
    breakeven_acceptance_length: float | None = None
    p99_p50_ratio: Mapping[str, float | None] = field(default_factory=dict)
    p99_p50_baseline: Mapping[str, float | None] = field(default_factory=dict)
    window_seconds: float | None = None
    verdict: str | None = None
    invalid: str | None = None  # why the window's numbers cannot be true (sidecar.core.validity); None: valid
    # The break-even acceptance ratio measured from latency, once established (MeasuredSpeedup.policy_threshold).
    measured_threshold: float | None = None
    # The K with the best expected speedup and the expected speedup of every smaller K (right_size_k).
    right_size: RightSize | None = None
    # Where speculation stops paying as the load grows (load_schedule), with the K to keep below the cut.
    schedule: SchedulePlan | None = None


def observation_from_stats(
    model: ModelStats | None,
    *,
    engine_up: bool,
    window_seconds: float | None,
    baseline: Mapping[str, float | None] | None = None,
    measured_threshold: float | None = None,
    measured: MeasuredSpeedup | None = None,
    schedule: SchedulePlan | None = None,
) -> Observation:
    if model is None:
        return Observation(engine_up=engine_up, speculation=False, window_seconds=window_seconds)
    return Observation(
        engine_up=engine_up,
        speculation=model.speculation,
        acceptance_ratio=model.acceptance_ratio,
        draft_tokens=model.draft_tokens,
        drafts=model.drafts,
        position_acceptance=tuple(model.position_acceptance),
        mean_acceptance_length=model.mean_acceptance_length,
        num_speculative_tokens=model.num_speculative_tokens,
        breakeven_acceptance_length=model.breakeven_acceptance_length,
        p99_p50_ratio=model.p99_p50_ratio,
        p99_p50_baseline=dict(baseline or {}),
        window_seconds=window_seconds,
        verdict=str(model.verdict),
        invalid=model.invalid if model.invalid is None else f"{model.invalid}: {model.invalid_detail or ''}",
        measured_threshold=measured_threshold,
        right_size=for_model(model, measured),
        schedule=schedule,
    )


@dataclass(frozen=True)
class PolicyState:
    speculation: bool  # configured on the target right now (read from its args)
    rollout_complete: bool = True
    record: ControlRecord = field(default_factory=ControlRecord)
    # in memory only
    trip_count: int = 0
    trip_reason: Reason | None = None
    last_window_at: float | None = None  # when the last counted window ended
    recent: tuple[float, ...] = ()  # acceptance ratios of the last counted windows, oldest first
    spread: float | None = None  # window_spread(recent) as of the last passing window
    spread_count: int = 0  # how many windows that spread rests on
    trial_passes: int = 0
    trial_failed: bool = False
    trial_done: bool = False  # the trial passed; until the record says so, the pass is asked to be recorded


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    state: PolicyState  # the state after this decision; state.record is what to persist with a toggle
    write: bool  # False for NONE and in dry-run
    detail: str
    prior: ControlRecord | None = None  # the record this toggle was decided on; the actuator checks it is current
    # The state to carry on when the write does not land (None: the state it was decided on). A passed trial
    # stays passed in memory while its record is retried, rather than being judged again from the next window.
    unapplied: PolicyState | None = None
    k: int | None = None  # for REDUCE_K: the num_speculative_tokens to write
    schedule: tuple[tuple[int, int, int], ...] | None = None  # for SCHEDULE_K: the [start, end, K] ranges to write

    @property
    def toggles(self) -> bool:
        """A write of the args that rolls the engine: counted by the flap budget and the toggle metrics."""
        return self.action in (Action.DISABLE, Action.ENABLE, Action.REDUCE_K, Action.SCHEDULE_K)


def decide(observation: Observation, state: PolicyState, config: PolicyConfig, now: float) -> Decision:
    if not _speculates_without_flags(observation, state):
        return _decide(observation, state, config, now)
    # Judged as on, so its windows count and a failing run asks for a disable, which the actuator refuses
    # with the reason (no flag to remove: a speculators checkpoint as --model, a --config file). The state
    # kept says what the args say, so the next read of the target does not start the count afresh.
    decision = _decide(observation, replace(state, speculation=True), config, now)
    unapplied = decision.unapplied
    return replace(
        decision,
        state=replace(decision.state, speculation=False),
        unapplied=None if unapplied is None else replace(unapplied, speculation=False),
    )


def _speculates_without_flags(observation: Observation, state: PolicyState) -> bool:
    """The engine reports speculation although no flag in the target's args turns it on, and the record does
    not say the flags were taken out through the sidecar (whose engine may still be going down)."""
    record = state.record
    return (
        observation.engine_up
        and observation.speculation
        and not state.speculation
        and state.rollout_complete
        and record.removed is None
        and record.state != "off"
    )


def _decide(observation: Observation, state: PolicyState, config: PolicyConfig, now: float) -> Decision:
    record = state.record
    if record.pin is not None:
        return _pinned(state, config, now)
    if not state.rollout_complete:
        return _hold(state, Reason.ROLLOUT_IN_PROGRESS, "a rollout is in progress; waiting for it to finish")
    if record.latched:
        return _hold(state, Reason.LATCHED, f"latched ({record.latched}); a human must clear it")
    if not state.speculation:
        return _while_off(state, config, now)
    judged = _judge(observation, state, config, now)
    unrecorded = _in_trial(state, config) and state.trial_done  # passed, but the record does not say so yet
    if isinstance(judged, Decision):
        return _record_pass(judged, config) if unrecorded else judged
    if unrecorded:  # the pass stands; the window is judged as any other, and the record is asked for again
        return _record_pass(_normal(judged, config, now), config)
    if _in_trial(state, config):
        return _trial(judged.state, judged.keeps, config, now)
    return _normal(judged, config, now)


# --- the pin ---------------------------------------------------------------------------------------------


def _pinned(state: PolicyState, config: PolicyConfig, now: float) -> Decision:
    want_on = state.record.pin == "on"
    reason = Reason.PINNED_ON if want_on else Reason.PINNED_OFF
    if want_on == state.speculation:
        return _hold(state, reason, f"pinned {state.record.pin} by a user")
    if not state.rollout_complete:
        return _hold(state, Reason.ROLLOUT_IN_PROGRESS, "pinned, but a rollout is in progress")
    action = Action.ENABLE if want_on else Action.DISABLE
    return _toggle(
        state, config, now, action, reason=reason, detail=f"pinned {state.record.pin} by a user: enforcing it"
    )


# --- judging one window ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    state: PolicyState  # with this window counted: trip_count/trip_reason advanced, reset or held
    keeps: bool  # passes every rule at threshold + hysteresis (what a trial needs)
    inconclusive: bool  # below the threshold, but within the noise of a window this size
    warming: bool = False  # ... or the noise is not known yet
    threshold: float = 0.5  # the acceptance ratio it was judged against (effective_threshold)
    # With reduce_k, when failing: the smaller K that would still pay (None: off is the better move), and why.
    reduce_to: KOption | None = None
    reduce_words: str = ""
    schedule: SchedulePlan | None = None  # the observation's load schedule (written with schedule_k)


def _judge(obs: Observation, state: PolicyState, config: PolicyConfig, now: float) -> _Window | Decision:
    """The window counted, or a no-action Decision when it is no evidence either way."""
    if not obs.engine_up:
        return _hold(state, Reason.ENGINE_DOWN, "the engine is not answering")
    if obs.invalid is not None:
        # Before anything reads a number: every comparison with NaN is false, and a negative ratio is "low".
        return _hold(state, Reason.INVALID_WINDOW, f"impossible numbers in this window ({obs.invalid}): no judgement")
    if not obs.speculation or obs.acceptance_ratio is None:
        return _hold(state, Reason.NO_DATA, "no speculation metrics in this window")
    if obs.window_seconds is not None and obs.window_seconds < 0.9 * config.window_seconds:
        return _hold(
            state, Reason.WINDOW_FILLING, f"window is {obs.window_seconds:.0f}s of {config.window_seconds:.0f}s"
        )
    if obs.draft_tokens is None or obs.draft_tokens < config.min_draft_tokens:
        tokens = 0 if obs.draft_tokens is None else obs.draft_tokens
        return _hold(state, Reason.SMALL_WINDOW, f"{tokens:.0f} draft tokens < {config.min_draft_tokens:.0f}")
    if state.last_window_at is not None and now - state.last_window_at < 0.99 * config.window_seconds:
        return _hold(state, Reason.AWAITING_WINDOW, "this window overlaps the last one counted")
    spread, warming = _known_spread(state, config)
    margin = config.evidence_z * max(ratio_standard_error(obs) or 0.0, spread or 0.0)
    threshold = effective_threshold(obs, config)
    failing = () if warming else failing_rules(obs, config, threshold, margin=margin)
    keeps = not failing_rules(obs, config, threshold + config.hysteresis, margin=0.0)
    recent = (*state.recent, obs.acceptance_ratio)[-max(config.spread_windows, config.spread_min, 2) :]
    counted = replace(state, last_window_at=now, recent=recent)
    if failing:
        tripped = replace(counted, trip_count=state.trip_count + 1, trip_reason=failing[0])
        reduce_to, words = _smaller_k(obs, state, config, threshold, failing)
        return _Window(
            tripped, keeps, False, threshold=threshold, reduce_to=reduce_to, reduce_words=words, schedule=obs.schedule
        )
    if failing_rules(obs, config, threshold, margin=0.0):
        # Below the threshold, but within the noise (or the noise is not known yet): neither trips nor clears.
        return _Window(counted, keeps, True, warming, threshold, schedule=obs.schedule)
    passed = replace(counted, trip_count=0, trip_reason=None, spread=window_spread(recent), spread_count=len(recent))
    return _Window(passed, keeps, False, threshold=threshold, schedule=obs.schedule)


# The rules a smaller K can answer: too few accepted tokens for the drafts' cost. Not a latency tail.
_REDUCIBLE = frozenset({Reason.LOW_ACCEPTANCE, Reason.BELOW_BREAKEVEN})


def _smaller_k(
    obs: Observation, state: PolicyState, config: PolicyConfig, threshold: float, failing: tuple[Reason, ...]
) -> tuple[KOption | None, str]:
    """With reduce_k: the smaller K to write instead of a disable, and in words why it is (or is not) chosen.

    The bar is the threshold plus the trial's hysteresis, so the reduced K does not trip again on the same drafts.
    One step only: once the record holds a lowered K, the next step down is off.
    """
    if not config.reduce_k:
        return None, ""
    size = obs.right_size
    if state.record.reduced is not None:
        return None, "K was lowered already (spec-sidecar.io/reduced-k): the next step is off"
    if state.record.scheduled is not None:
        return None, "a schedule of K is in place already (spec-sidecar.io/k-schedule): the next step is off"
    if not set(failing) <= _REDUCIBLE:
        return None, "the latency tail fails, which fewer drafts per step do not answer"
    if size is None:
        return None, "no per-position acceptance in this window to size K with"
    bar = threshold + config.hysteresis
    choice = reduce_instead_of_disable(size, bar)
    if choice is None:
        return None, (
            f"no K below {size.current_k} reads acceptance >= {bar:.2f} with an expected speedup above "
            f"1.05 at the low end of its interval ({size.cost.label})"
        )
    words = (
        f"the first {choice.k} positions read acceptance {choice.acceptance_ratio:.2f} (>= {bar:.2f}) and an "
        f"expected speedup of {choice.speedup:.2f} (95 % from {choice.speedup_low:.2f}; {size.cost.label}) "
        f"against {size.current.speedup:.2f} at K = {size.current_k}"
    )
    return choice, words


def effective_threshold(obs: Observation, config: PolicyConfig) -> float:
    """The acceptance ratio a window is judged against: the measured break-even once established, else the
    fixed ``threshold`` (the prior). docs/policy.md, 'The measured break-even', says when one takes over."""
    if config.measured_breakeven and obs.measured_threshold is not None:
        return obs.measured_threshold
    return config.threshold


def _known_spread(state: PolicyState, config: PolicyConfig) -> tuple[float | None, bool]:
    """The spread between windows to judge this one with, and whether it is still too young to judge by.

    The spread kept from the last passing window, when it rests on at least ``spread_min`` windows. A younger
    one would let a few alike windows after a start (all-or-nothing requests make many windows alike) pass
    for quiet traffic; it gives way to the spread of every window seen so far, which a drop can only widen.
    Until that rests on ``spread_min`` windows, no window can fail. Before the first passing window, with no
    warm-up, only the window's own counters count.
    """
    if state.spread_count >= config.spread_min:
        return state.spread, False
    return window_spread(state.recent), len(state.recent) < config.spread_min


def window_spread(ratios: tuple[float, ...]) -> float | None:
    """The standard deviation of one window's ratio, from successive differences (von Neumann):
    sqrt(sum((x[i+1] - x[i])²) / (2(n-1))). A level shift adds one large difference, not n large deviations."""
    if len(ratios) < 2:
        return None
    squares = sum((b - a) ** 2 for a, b in itertools.pairwise(ratios))
    return math.sqrt(squares / (2 * (len(ratios) - 1)))


def failing_rules(obs: Observation, config: PolicyConfig, threshold: float, *, margin: float) -> tuple[Reason, ...]:
    """Every enabled rule this window breaks, most important first.

    The acceptance rule asks for the ratio to be below ``threshold`` by more than ``margin``.
    """
    failing: list[Reason] = []
    ratio = obs.acceptance_ratio
    if ratio is not None and ratio + margin < threshold:
        failing.append(Reason.LOW_ACCEPTANCE)
    length, breakeven = obs.mean_acceptance_length, obs.breakeven_acceptance_length
    if config.breakeven_rule and length is not None and breakeven is not None and length < breakeven:
        failing.append(Reason.BELOW_BREAKEVEN)
    if config.divergence_factor is not None and _diverges(obs, config.divergence_factor, config.divergence_metrics):
        failing.append(Reason.LATENCY_DIVERGENCE)
    return tuple(failing)


def ratio_standard_error(obs: Observation) -> float | None:
    """Standard error of the window's acceptance ratio, from the window's own counters.

    Draft tokens are not independent coin flips: a draft's accepted tokens are a prefix, so they come in
    runs. With per-position counters the per-draft accepted count A has P(A > i) = rate_i, hence
    E[A] = sum(rate_i), E[A²] = sum((2i+1)·rate_i), and se = sqrt(Var(A) / drafts) / k. With drafts but no
    positions, Var(A) <= E[A]·(k - E[A]) (Bhatia-Davis) gives the upper bound sqrt(r(1-r) / drafts). With
    draft tokens only, the binomial sqrt(r(1-r) / tokens) (optimistic: it ignores the runs).
    """
    ratio = obs.acceptance_ratio
    if ratio is None:
        return None
    k = len(obs.position_acceptance)
    if obs.drafts and k:
        mean = sum(obs.position_acceptance)
        second = sum((2 * i + 1) * rate for i, rate in enumerate(obs.position_acceptance))
        return math.sqrt(max(second - mean * mean, 0.0) / obs.drafts) / k
    spread = max(ratio * (1.0 - ratio), 0.0)
    if obs.drafts:
        return math.sqrt(spread / obs.drafts)
    if obs.draft_tokens:
        return math.sqrt(spread / obs.draft_tokens)
    return None


def _diverges(obs: Observation, factor: float, metrics: tuple[str, ...]) -> bool:
    for metric in metrics:
        value = divergence(obs.p99_p50_ratio.get(metric), obs.p99_p50_baseline.get(metric))
        if value is not None and value > factor:
            return True
    return False


# --- speculation on: normal operation --------------------------------------------------------------------


def _normal(window: _Window, config: PolicyConfig, now: float) -> Decision:
    state = window.state
    schedule = window.schedule
    scheduled = _scheduled(state, config, now, schedule, window)
    if scheduled is not None:
        return scheduled
    if window.warming and state.trip_count < config.trip_windows:
        detail = f"below {window.threshold:.3g}, but {len(state.recent)} windows are too few to know the noise"
        return _hold(state, Reason.WARMING_UP, detail)
    if window.inconclusive and state.trip_count < config.trip_windows:
        detail = (
            f"below {window.threshold:.3g} but within {config.evidence_z} standard errors; "
            f"count stays {state.trip_count}"
        )
        return _hold(state, Reason.INCONCLUSIVE, detail)
    if state.trip_reason is None:
        return _hold(state, Reason.HEALTHY, "window passed every rule")
    if state.trip_count < config.trip_windows:
        detail = f"{state.trip_reason}: {state.trip_count} of {config.trip_windows} windows"
        return _hold(state, Reason.TRIPPING, detail)
    held = _held_back(state, config, now)
    if held is not None:
        return held
    detail = f"{state.trip_reason} for {state.trip_count} consecutive windows"
    if window.reduce_to is not None:
        k = window.reduce_to.k
        detail = f"{detail}; lowering num_speculative_tokens to {k} instead of turning speculation off: "
        return _toggle(
            state, config, now, Action.REDUCE_K, reason=state.trip_reason, detail=detail + window.reduce_words, k=k
        )
    if window.reduce_words:
        detail = f"{detail}; off rather than a smaller K: {window.reduce_words}"
    why_not = _schedule_refusal(state, config, schedule)
    if why_not:
        detail = f"{detail}; not a load schedule: {why_not}"
    return _toggle(state, config, now, Action.DISABLE, reason=state.trip_reason, detail=detail)


def _schedule_refusal(state: PolicyState, config: PolicyConfig, plan: SchedulePlan | None) -> str:
    """Why no load schedule is written (empty without ``schedule_k``, or when one is)."""
    if not config.schedule_k:
        return ""
    if state.record.scheduled is not None:
        return "one is in place already (spec-sidecar.io/k-schedule)"
    if plan is None:
        return "no windows to measure the speedup per load band with"
    if plan.as_config_value() is None:
        return plan.reason
    if plan.source is not ScheduleSource.MEASURED:
        return f"only the prior proposes one ({plan.reason}); the sidecar writes a measured schedule only"
    return ""


def _scheduled(
    state: PolicyState, config: PolicyConfig, now: float, plan: SchedulePlan | None, window: _Window
) -> Decision | None:
    """With schedule_k: write the measured schedule, whether the window trips or passes (the acceptance rule does
    not see load, so a schedule is not waiting for a trip), unless held back by the cooldown or a manual enable."""
    if not config.schedule_k or _schedule_refusal(state, config, plan) or plan is None or window.warming:
        return None
    value = plan.as_config_value()
    if value is None or plan.cut is None:
        return None
    record = state.record
    since_change = None if record.changed_at is None else now - record.changed_at
    if since_change is not None and since_change < config.cooldown:
        return None  # a passing window is not held: the next one after the cooldown writes it
    manual_on = record.changed_by is By.MANUAL and record.state == "on"
    if manual_on and since_change is not None and since_change < config.manual_grace:
        return None
    reason = state.trip_reason or Reason.LOAD_SCHEDULE
    detail = (
        f"writing a load schedule {value} (K = {plan.k} up to batch size {plan.cut}, 0 above) rather than "
        f"{'turning speculation off' if state.trip_reason else 'leaving K fixed'}: {plan.reason}"
    )
    ranges = tuple((a, b, c) for a, b, c in value)
    return _toggle(state, config, now, Action.SCHEDULE_K, reason=reason, detail=detail, schedule=ranges)


def _held_back(state: PolicyState, config: PolicyConfig, now: float) -> Decision | None:
    record = state.record
    since_change = None if record.changed_at is None else now - record.changed_at
    if since_change is not None and since_change < config.cooldown:
        return _hold(state, Reason.COOLDOWN, f"{state.trip_reason}, but {since_change:.0f}s since the last change")
    manual_on = record.changed_by is By.MANUAL and record.state == "on"
    if manual_on and since_change is not None and since_change < config.manual_grace:
        return _hold(state, Reason.MANUAL_GRACE, f"{state.trip_reason}, but enabled by hand {since_change:.0f}s ago")
    return None


# --- timed trial -----------------------------------------------------------------------------------------


def _in_trial(state: PolicyState, config: PolicyConfig) -> bool:
    """The record says the sidecar started a trial and nothing has been recorded since (not even its pass)."""
    record = state.record
    started = record.reason == Reason.TRIAL_START and record.changed_by is By.SIDECAR
    return config.trial is not None and started


def _trial(state: PolicyState, passed: bool, config: PolicyConfig, now: float) -> Decision:
    """One counted window during a trial: it must clear threshold + hysteresis, not just the threshold."""
    trial = config.trial
    assert trial is not None
    state = replace(
        state,
        trial_passes=state.trial_passes + 1 if passed else state.trial_passes,
        trial_failed=state.trial_failed or not passed,
    )
    if state.trial_failed:
        held = _held_back(replace(state, trip_reason=Reason.TRIAL_FAILED), config, now)
        if held is not None:
            return held
        return _toggle(state, config, now, Action.DISABLE, reason=Reason.TRIAL_FAILED, detail="a trial window failed")
    if state.trial_passes >= trial.windows:
        done = replace(state, trial_done=True, trip_count=0, trip_reason=None)
        detail = f"{state.trial_passes} trial windows passed; keeping speculation"
        return _record_pass(_hold(done, Reason.TRIAL_PASSED, detail), config)
    return _hold(state, Reason.TRIAL_RUNNING, f"{state.trial_passes} of {trial.windows} trial windows passed")


def _record_pass(held: Decision, config: PolicyConfig) -> Decision:
    """Turn a no-action decision after a passed trial into a request to record the pass on the target.

    Only the record changes (annotations: no rollout): reason ``trial_passed`` and the trial counters reset,
    as a success should. ``changed-at`` and the history stay those of the toggle that started the trial: the
    pass is no toggle, so neither the cooldown nor the flap budget moves. Anything but a hold (a disable after
    the pass) wins and writes its own record. A dry run keeps the pass in memory only: it writes nothing.
    """
    if held.action is not Action.NONE or config.dry_run:
        return held
    prior = held.state.record
    passed = replace(prior, reason=str(Reason.TRIAL_PASSED), trial_attempts=0, next_trial_at=None)
    return Decision(
        Action.RECORD,
        Reason.TRIAL_PASSED,
        replace(held.state, record=passed),
        True,
        f"recording the passed trial ({held.detail})",
        prior=prior,
        unapplied=held.state,
    )


def _while_off(state: PolicyState, config: PolicyConfig, now: float) -> Decision:
    record, trial = state.record, config.trial
    if trial is None or record.changed_by is not By.SIDECAR:
        return _hold(state, Reason.SPECULATION_OFF, "speculation is off")
    if record.trial_attempts >= trial.max_tries or record.next_trial_at is None:
        return _hold(state, Reason.TRIALS_EXHAUSTED, f"{record.trial_attempts} trials failed; a human must enable")
    if now < record.next_trial_at:
        return _hold(state, Reason.SPECULATION_OFF, f"next trial in {record.next_trial_at - now:.0f}s")
    if record.changed_at is not None and now - record.changed_at < config.cooldown:
        return _hold(state, Reason.COOLDOWN, "trial due, but inside the cooldown")
    return _toggle(
        state, config, now, Action.ENABLE, reason=Reason.TRIAL_START, detail=f"trial {record.trial_attempts + 1}"
    )


# --- outcomes --------------------------------------------------------------------------------------------


def _hold(state: PolicyState, reason: Reason, detail: str) -> Decision:
    return Decision(Action.NONE, reason, state, False, detail)


def _toggle(
    state: PolicyState,
    config: PolicyConfig,
    now: float,
    action: Action,
    *,
    reason: Reason,
    detail: str,
    k: int | None = None,
    schedule: tuple[tuple[int, int, int], ...] | None = None,
) -> Decision:
    record = state.record
    pinned = reason in (Reason.PINNED_ON, Reason.PINNED_OFF)
    recent = record.toggles_since(now - config.flap_period, By.SIDECAR)
    if not pinned and recent >= config.flap_budget:
        latched = replace(record, latched=f"{recent} automatic toggles within {config.flap_period:.0f}s")
        return Decision(
            Action.LATCH,
            Reason.FLAP_BUDGET,
            replace(state, record=latched),
            not config.dry_run,
            f"would {action} ({reason}) but the flap budget of {config.flap_budget} is spent: latching",
            prior=record,
        )
    toggled = record.toggled(now, str(action), By.SIDECAR, str(reason), record.removed)
    toggled = _schedule_trial(toggled, record, config, now, reason=reason) if action is Action.DISABLE else toggled
    fresh = PolicyState(speculation=action is not Action.DISABLE, rollout_complete=False, record=toggled)
    if config.dry_run:  # nothing changes; start counting afresh so a dry run reports each trip once
        fresh = replace(state, trip_count=0, trip_reason=None)
    return Decision(action, reason, fresh, not config.dry_run, detail, prior=record, k=k, schedule=schedule)


def _schedule_trial(
    toggled: ControlRecord, before: ControlRecord, config: PolicyConfig, now: float, *, reason: Reason
) -> ControlRecord:
    trial = config.trial
    if trial is None or reason is Reason.PINNED_OFF:
        return replace(toggled, trial_attempts=0, next_trial_at=None)
    attempts = before.trial_attempts + 1 if reason is Reason.TRIAL_FAILED else 0
    if attempts >= trial.max_tries:
        return replace(toggled, trial_attempts=attempts, next_trial_at=None)
    wait = min(trial.after * trial.backoff**attempts, trial.max_wait)
    return replace(toggled, trial_attempts=attempts, next_trial_at=stored_time(now + wait))
