"""The decision policy under fake time: trip, hold, cooldown, grace, flap budget, pin, dry-run, timed trial."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.policy import (
    Action,
    Decision,
    Observation,
    PolicyConfig,
    PolicyState,
    Reason,
    TrialConfig,
    decide,
    ratio_standard_error,
    window_spread,
)

T0 = 1_800_000_000.0
CONFIG = PolicyConfig()  # threshold 0.5, 200 tokens, 3 windows of 60 s, cooldown 600 s, no warm-up


def window(ratio: float | None, tokens: float = 1000.0, **extra: object) -> Observation:
    return Observation(
        engine_up=True,
        speculation=True,
        acceptance_ratio=ratio,
        draft_tokens=tokens,
        window_seconds=60.0,
        **extra,  # type: ignore[arg-type]
    )


def run(
    observations: list[Observation],
    state: PolicyState | None = None,
    config: PolicyConfig = CONFIG,
    start: float = T0,
    step: float = 60.0,
) -> list[Decision]:
    """Feed one observation per step; the state carries over as the runtime would carry it."""
    state = state or PolicyState(speculation=True)
    decisions = []
    for i, obs in enumerate(observations):
        decision = decide(obs, state, config, start + i * step)
        decisions.append(decision)
        state = decision.state
    return decisions


def actions(decisions: list[Decision]) -> list[str]:
    return [str(d.action) for d in decisions]


def test_three_consecutive_low_windows_disable_on_the_third() -> None:
    decisions = run([window(0.3)] * 3)
    assert actions(decisions) == ["none", "none", "disable"]
    assert [d.reason for d in decisions] == [Reason.TRIPPING, Reason.TRIPPING, Reason.LOW_ACCEPTANCE]
    assert decisions[-1].write


QUIET = PolicyState(speculation=True, recent=(0.3,) * 10, spread=0.02)  # a known, small window-to-window noise


def test_a_passing_window_resets_the_count() -> None:
    decisions = run([window(0.3), window(0.3), window(0.6), window(0.3), window(0.3)], QUIET)
    assert Action.DISABLE not in [d.action for d in decisions]
    assert decisions[-1].state.trip_count == 2


def test_windows_without_evidence_neither_advance_nor_reset_the_count() -> None:
    gaps = [
        window(0.3, tokens=50),  # too small
        window(None),  # no data
        Observation(engine_up=False, speculation=True),
        replace(window(0.9), window_seconds=20.0),  # window still filling after a restart
    ]
    for gap in gaps:
        decisions = run([window(0.3), gap, window(0.3)])
        assert decisions[1].action is Action.NONE
        assert decisions[1].state.trip_count == 1
        assert decisions[2].state.trip_count == 2


def test_no_evidence_reasons_are_named() -> None:
    assert run([window(0.3, tokens=199)])[0].reason is Reason.SMALL_WINDOW
    assert run([window(None)])[0].reason is Reason.NO_DATA
    assert run([Observation(engine_up=False, speculation=False)])[0].reason is Reason.ENGINE_DOWN


def test_overlapping_windows_are_counted_once_per_window_length() -> None:
    # The runtime calls decide on every scrape (every 5 s) over a sliding 60 s window: only every 12th counts.
    decisions = run([window(0.3)] * 30, step=5.0)
    counted = [i for i, d in enumerate(decisions) if d.reason is not Reason.AWAITING_WINDOW]
    assert counted[:3] == [0, 12, 24]
    assert decisions[24].action is Action.DISABLE


def test_cooldown_holds_a_trip_until_it_is_over() -> None:
    record = ControlRecord(state="on", changed_at=T0, changed_by=By.SIDECAR, reason="trial_start")
    decisions = run([window(0.3)] * 12, PolicyState(speculation=True, record=record), start=T0 + 60)
    assert [d.reason for d in decisions[2:9]] == [Reason.COOLDOWN] * 7
    assert decisions[9].action is Action.DISABLE  # at T0 + 600


def test_a_manual_enable_is_not_undone_in_the_next_breath() -> None:
    record = ControlRecord(state="on", changed_at=T0, changed_by=By.MANUAL, reason="manual")
    state = PolicyState(speculation=True, record=record)
    early = run([window(0.2)] * 5, state, start=T0 + 700)  # past the cooldown, inside the grace
    assert [d.reason for d in early[2:]] == [Reason.MANUAL_GRACE] * 3
    late = run([window(0.2)] * 3, state, start=T0 + 3600)
    assert late[-1].action is Action.DISABLE


def test_flap_budget_latches_instead_of_toggling_and_then_waits_for_a_human() -> None:
    history = tuple(Toggle(T0 - 3600 + i * 700, "disable", By.SIDECAR, "low_acceptance") for i in range(4))
    record = ControlRecord(state="on", changed_at=T0 - 1200, changed_by=By.SIDECAR, history=history)
    decisions = run([window(0.3)] * 5, PolicyState(speculation=True, record=record))
    assert decisions[2].action is Action.LATCH and decisions[2].reason is Reason.FLAP_BUDGET
    assert decisions[2].write and decisions[2].state.record.latched
    assert [d.reason for d in decisions[3:]] == [Reason.LATCHED, Reason.LATCHED]


def test_old_toggles_and_manual_toggles_do_not_spend_the_flap_budget() -> None:
    old = tuple(Toggle(T0 - 30 * 3600 + i, "disable", By.SIDECAR, "x") for i in range(10))
    manual = tuple(Toggle(T0 - 100 + i, "enable", By.MANUAL, "x") for i in range(10))
    record = ControlRecord(state="on", changed_at=T0 - 7200, changed_by=By.SIDECAR, history=old + manual)
    assert run([window(0.3)] * 3, PolicyState(speculation=True, record=record))[-1].action is Action.DISABLE


def test_a_pin_on_wins_over_low_acceptance() -> None:
    state = PolicyState(speculation=True, record=ControlRecord(pin="on"))
    decisions = run([window(0.1)] * 6, state)
    assert {d.action for d in decisions} == {Action.NONE}
    assert {d.reason for d in decisions} == {Reason.PINNED_ON}


def test_a_pin_is_enforced_when_the_target_disagrees() -> None:
    engine_off = Observation(engine_up=True, speculation=False, window_seconds=60.0)
    on = decide(engine_off, PolicyState(speculation=False, record=ControlRecord(pin="on")), CONFIG, T0)
    off = decide(window(0.9), PolicyState(speculation=True, record=ControlRecord(pin="off")), CONFIG, T0)
    assert (on.action, on.reason) == (Action.ENABLE, Reason.PINNED_ON)
    assert (off.action, off.reason) == (Action.DISABLE, Reason.PINNED_OFF)


def test_a_pin_is_enforced_even_when_latched_or_out_of_budget() -> None:
    history = tuple(Toggle(T0 - i, "disable", By.SIDECAR, "x") for i in range(9))
    record = ControlRecord(pin="on", latched="flapping", history=history)
    engine_off = Observation(engine_up=True, speculation=False, window_seconds=60.0)
    assert decide(engine_off, PolicyState(speculation=False, record=record), CONFIG, T0).action is Action.ENABLE


def test_nothing_happens_while_a_rollout_is_in_progress() -> None:
    decisions = run([window(0.1)] * 4, PolicyState(speculation=True, rollout_complete=False))
    assert {d.reason for d in decisions} == {Reason.ROLLOUT_IN_PROGRESS}
    assert decisions[-1].state.trip_count == 0


def test_dry_run_decides_but_marks_nothing_to_write_and_reports_each_trip_once() -> None:
    decisions = run([window(0.3)] * 6, config=replace(CONFIG, dry_run=True))
    assert actions(decisions) == ["none", "none", "disable", "none", "none", "disable"]
    assert not any(d.write for d in decisions)
    assert decisions[2].state.speculation  # nothing was changed


def test_a_disable_records_state_reason_time_and_history() -> None:
    decision = run([window(0.3)] * 3)[-1]
    record = decision.state.record
    assert (record.state, record.reason, record.changed_at, record.changed_by) == (
        "off",
        "low_acceptance",
        T0 + 120,
        By.SIDECAR,
    )
    assert record.history == (Toggle(T0 + 120, "disable", By.SIDECAR, "low_acceptance"),)
    assert not decision.state.speculation and not decision.state.rollout_complete


def test_break_even_rule_is_off_by_default_and_named_when_on() -> None:
    slow = window(0.6, mean_acceptance_length=1.9, breakeven_acceptance_length=2.2)
    assert run([slow] * 3)[-1].action is Action.NONE
    decisions = run([slow] * 3, config=replace(CONFIG, breakeven_rule=True))
    assert (decisions[-1].action, decisions[-1].reason) == (Action.DISABLE, Reason.BELOW_BREAKEVEN)


def test_divergence_rule_is_off_by_default_and_named_when_on() -> None:
    spread = window(0.7, p99_p50_ratio={"tpot": 6.0}, p99_p50_baseline={"tpot": 2.0})
    assert run([spread] * 3)[-1].action is Action.NONE
    decisions = run([spread] * 3, config=replace(CONFIG, divergence_factor=2.5))
    assert (decisions[-1].action, decisions[-1].reason) == (Action.DISABLE, Reason.LATENCY_DIVERGENCE)


def test_divergence_without_a_baseline_never_fires() -> None:
    spread = window(0.7, p99_p50_ratio={"tpot": 60.0})
    assert run([spread] * 5, config=replace(CONFIG, divergence_factor=1.5))[-1].action is Action.NONE


TRIAL = replace(CONFIG, trial=TrialConfig(after=1800, backoff=2, max_tries=3, windows=3))


def off_by_sidecar(at: float, attempts: int = 0, next_at: float | None = None) -> PolicyState:
    record = ControlRecord(
        state="off",
        reason="low_acceptance",
        changed_at=at,
        changed_by=By.SIDECAR,
        trial_attempts=attempts,
        next_trial_at=next_at if next_at is not None else at + 1800,
    )
    return PolicyState(speculation=False, record=record)


def test_a_disable_schedules_the_first_trial_when_trials_are_on() -> None:
    record = run([window(0.3)] * 3, config=TRIAL)[-1].state.record
    assert (record.trial_attempts, record.next_trial_at) == (0, T0 + 120 + 1800)
    assert run([window(0.3)] * 3)[-1].state.record.next_trial_at is None


def test_a_due_trial_re_enables_and_passing_windows_keep_it() -> None:
    off = off_by_sidecar(T0)
    assert decide(window(None), off, TRIAL, T0 + 1799).reason is Reason.SPECULATION_OFF
    start = decide(window(None), off, TRIAL, T0 + 1800)
    assert (start.action, start.reason) == (Action.ENABLE, Reason.TRIAL_START)
    on = replace(start.state, rollout_complete=True)
    decisions = run([window(0.6)] * 4, on, config=TRIAL, start=T0 + 1900)
    assert [d.reason for d in decisions] == [Reason.TRIAL_RUNNING] * 2 + [Reason.TRIAL_PASSED, Reason.HEALTHY]


def test_a_trial_needs_a_clearly_higher_ratio_than_the_trip_and_backs_off_when_it_fails() -> None:
    start = decide(window(None), off_by_sidecar(T0), TRIAL, T0 + 1800)
    on = replace(start.state, rollout_complete=True)
    decisions = run([window(0.52)] * 12, on, config=TRIAL, start=T0 + 1900)  # above 0.5, below 0.55
    failed = next(d for d in decisions if d.action is Action.DISABLE)
    assert failed.reason is Reason.TRIAL_FAILED
    assert decisions.index(failed) == 9  # held by the cooldown until 600 s after the trial started
    record = failed.state.record
    assert record.trial_attempts == 1
    assert record.next_trial_at == record.changed_at + 1800 * 2  # type: ignore[operator]


def test_trials_stop_after_max_tries() -> None:
    exhausted = off_by_sidecar(T0, attempts=3, next_at=None)
    assert decide(window(None), exhausted, TRIAL, T0 + 10**6).reason is Reason.TRIALS_EXHAUSTED
    last = PolicyState(
        speculation=True,
        rollout_complete=True,
        record=ControlRecord(state="on", reason="trial_start", changed_at=T0, changed_by=By.SIDECAR, trial_attempts=2),
    )
    failed = next(d for d in run([window(0.1)] * 11, last, config=TRIAL, start=T0 + 60) if d.toggles)
    assert failed.reason is Reason.TRIAL_FAILED
    assert (failed.state.record.trial_attempts, failed.state.record.next_trial_at) == (3, None)


def test_no_trial_after_a_manual_disable() -> None:
    manual = PolicyState(speculation=False, record=ControlRecord(state="off", changed_at=T0, changed_by=By.MANUAL))
    assert decide(window(None), manual, TRIAL, T0 + 10**6).action is Action.NONE


def test_every_reason_is_a_valid_prometheus_label_value_in_snake_case() -> None:
    assert all(re.fullmatch(r"[a-z][a-z_]*", str(r)) for r in Reason)


def test_standard_error_from_positions_matches_the_per_draft_distribution() -> None:
    # Half the drafts accept exactly one token, half none: A ~ Bernoulli(0.5), Var(A) = 0.25, k = 4.
    obs = window(0.125, tokens=400, drafts=100.0, position_acceptance=(0.5, 0.0, 0.0, 0.0))
    assert ratio_standard_error(obs) == pytest.approx((0.25 / 100) ** 0.5 / 4)
    # Every draft accepts all four tokens: no spread at all.
    assert ratio_standard_error(window(1.0, drafts=100.0, position_acceptance=(1.0,) * 4)) == 0.0


def test_standard_error_falls_back_to_bounds_without_positions() -> None:
    assert ratio_standard_error(window(0.5, tokens=400, drafts=100.0)) == pytest.approx((0.25 / 100) ** 0.5)
    assert ratio_standard_error(window(0.5, tokens=400)) == pytest.approx((0.25 / 400) ** 0.5)
    assert ratio_standard_error(window(None)) is None


def test_a_window_just_below_the_threshold_fails_only_with_enough_evidence() -> None:
    thin, thick = window(0.47, tokens=200), window(0.47, tokens=20_000)
    assert run([thin] * 3)[-1].action is Action.NONE  # 0.47 is within 1.5 standard errors of 0.5
    assert run([thick] * 3)[-1].action is Action.DISABLE
    bare = replace(CONFIG, evidence_z=0.0)
    assert run([thin] * 3, config=bare)[-1].action is Action.DISABLE


def test_an_inconclusive_window_neither_trips_nor_clears_the_count() -> None:
    low, unsure = window(0.3), window(0.47, tokens=200)
    decisions = run([low, unsure, low, low], QUIET)
    assert decisions[1].reason is Reason.INCONCLUSIVE and decisions[1].state.trip_count == 1
    assert actions(decisions) == ["none", "none", "none", "disable"]


def test_with_a_warm_up_no_window_fails_until_the_noise_is_known() -> None:
    decisions = run([window(0.3)] * 8, config=PolicyConfig(spread_min=5))
    assert [d.reason for d in decisions[:5]] == [Reason.WARMING_UP] * 5
    assert actions(decisions) == ["none"] * 7 + ["disable"]


ALL_HIGH = [window(0.98, tokens=200), window(0.99, tokens=200), window(0.98, tokens=200)]  # alike by chance
ONE_LOW_REQUEST = window(0.17, tokens=228)  # one rejected request of 188 draft tokens, one accepted of 40


def test_a_spread_from_fewer_windows_than_the_warm_up_does_not_pass_alike_windows_for_quiet_traffic() -> None:
    warm_up_4 = replace(CONFIG, spread_min=4)
    old_rule = run(ALL_HIGH + [ONE_LOW_REQUEST] * 4, config=replace(warm_up_4, spread_min=0))
    assert old_rule[-2].action is Action.DISABLE  # the spread of 3 alike windows (0.006) made every low one fail
    decisions = run(ALL_HIGH + [ONE_LOW_REQUEST] * 6, config=warm_up_4)
    assert decisions[2].state.spread_count == 3  # kept at the last passing window, but younger than the warm-up
    assert Action.DISABLE not in [d.action for d in decisions]
    assert [d.reason for d in decisions[3:]] == [Reason.WARMING_UP] + [Reason.INCONCLUSIVE] * 5


def test_a_drop_right_after_a_start_still_trips_once_the_spread_rests_on_enough_windows() -> None:
    decisions = run(ALL_HIGH + [ONE_LOW_REQUEST] * 30, config=replace(CONFIG, spread_min=4))
    disabled = [i for i, d in enumerate(decisions) if d.action is Action.DISABLE]
    assert disabled and 6 < disabled[0] < 25  # later than without the warm-up, but not never


def test_the_spread_between_windows_rests_on_the_last_60_windows() -> None:
    decisions = run([window(0.7 + 0.01 * (i % 3), tokens=5000) for i in range(70)])
    assert len(decisions[-1].state.recent) == 60
    assert decisions[-1].state.spread_count == 60
    assert decisions[-1].state.spread == pytest.approx(window_spread(decisions[-1].state.recent))


def test_a_noisy_history_widens_the_margin_and_a_quiet_one_does_not() -> None:
    quiet_windows, noisy_windows = (0.70, 0.71, 0.69, 0.70, 0.70, 0.71), (0.95, 0.20, 0.90, 0.30, 0.85, 0.60)
    quiet = PolicyState(speculation=True, recent=quiet_windows, spread=window_spread(quiet_windows))
    noisy = PolicyState(speculation=True, recent=noisy_windows, spread=window_spread(noisy_windows))
    below = window(0.40, tokens=5000)
    assert decide(below, quiet, CONFIG, T0).state.trip_count == 1
    held = decide(below, noisy, CONFIG, T0)
    assert held.reason is Reason.INCONCLUSIVE and held.state.trip_count == 0


def test_the_spread_of_windows_barely_sees_a_level_shift() -> None:
    shifted = (0.7,) * 15 + (0.3,) * 15
    spread = window_spread(shifted)
    assert spread is not None and spread < 0.06  # the plain standard deviation would be 0.2
    alternating = (0.2, 0.8) * 10
    assert window_spread(alternating) == pytest.approx((0.36 * 19 / (2 * 19)) ** 0.5)
    assert window_spread((0.5,)) is None


def test_the_spread_is_kept_from_the_last_passing_window_through_a_drop() -> None:
    state = PolicyState(speculation=True, recent=(0.70, 0.72, 0.68, 0.70, 0.71))
    decisions = run([window(0.71, tokens=5000)] + [window(0.3, tokens=5000)] * 3, state)
    frozen = decisions[0].state.spread
    assert frozen is not None and frozen < 0.05
    assert all(d.state.spread == frozen for d in decisions[1:3])  # the disable starts a fresh state
    assert decisions[-1].action is Action.DISABLE


def test_the_spread_is_learned_at_passing_windows() -> None:
    decisions = run([window(0.8, tokens=5000), window(0.6, tokens=5000), window(0.3, tokens=5000)])
    assert decisions[0].state.spread is None  # one window: no spread yet
    assert decisions[1].state.spread == pytest.approx(((0.8 - 0.6) ** 2 / 2) ** 0.5)
    assert decisions[2].state.spread == decisions[1].state.spread  # a failing window does not move it
