"""A timed trial that passed is recorded on the target, and a sidecar restarted from that record does not judge
the trial again: the pure policy, with the record taken through its annotations as a restart would read it."""

from __future__ import annotations

import json
from dataclasses import replace

from sidecar.core import annotations as ann
from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.policy import Action, Decision, Observation, PolicyConfig, PolicyState, Reason, TrialConfig, decide

T0 = 1_800_000_000.0
TRIAL = PolicyConfig(trial=TrialConfig(after=1800, backoff=2, max_tries=3, windows=3))
STARTED_AT = T0 + 1800.0
# What the Deployment says right after the sidecar's second trial started (the first one failed).
TRIAL_STARTED = ControlRecord(
    state="on",
    reason="trial_start",
    changed_at=STARTED_AT,
    changed_by=By.SIDECAR,
    history=(Toggle(T0 - 3600, "disable", By.SIDECAR, "low_acceptance"), Toggle(STARTED_AT, "enable", By.SIDECAR, "x")),
    trial_attempts=1,
    next_trial_at=STARTED_AT,
)


def window(ratio: float | None, tokens: float = 5000.0) -> Observation:
    return Observation(True, True, ratio, tokens, window_seconds=60.0)


def run(
    ratios: list[float], state: PolicyState, config: PolicyConfig = TRIAL, start: float = STARTED_AT + 100
) -> list[Decision]:
    decisions = []
    for i, ratio in enumerate(ratios):
        decision = decide(window(ratio), state, config, start + 60 * i)
        decisions.append(decision)
        state = decision.state
    return decisions


def restarted(record: ControlRecord) -> PolicyState:
    """A new sidecar: nothing in memory, the record as it reads back from the Deployment's annotations."""
    written = {k: v for k, v in ann.to_annotations(record).items() if v is not None}
    return PolicyState(speculation=True, rollout_complete=True, record=ann.from_annotations(written))


def passed_trial() -> Decision:
    return run([0.6, 0.6, 0.6], PolicyState(speculation=True, record=TRIAL_STARTED))[-1]


def test_a_passing_trial_asks_for_its_pass_to_be_recorded_on_the_record_it_was_judged_on() -> None:
    decision = passed_trial()
    assert (decision.action, decision.reason, decision.write) == (Action.RECORD, Reason.TRIAL_PASSED, True)
    assert decision.prior == TRIAL_STARTED
    assert not decision.toggles


def test_the_recorded_pass_resets_the_trial_counters_and_moves_neither_the_cooldown_nor_the_flap_budget() -> None:
    record = passed_trial().state.record
    assert (record.reason, record.trial_attempts, record.next_trial_at) == ("trial_passed", 0, None)
    assert (record.state, record.changed_by, record.changed_at) == ("on", By.SIDECAR, STARTED_AT)
    assert record.history == TRIAL_STARTED.history  # no toggle happened
    assert ann.to_annotations(record)[ann.TRIAL] is None  # the annotation is removed, not left at attempts 1


def test_a_sidecar_restarted_after_the_record_judges_healthy_traffic_by_the_ordinary_threshold() -> None:
    after_restart = run([0.52] * 30, restarted(passed_trial().state.record))
    assert {d.reason for d in after_restart} == {Reason.HEALTHY}


def test_without_the_record_a_restart_would_judge_the_trial_again_and_turn_speculation_off() -> None:
    """The false toggle the record prevents: 0.52 is above the threshold but below threshold + hysteresis."""
    again = run([0.52] * 30, restarted(TRIAL_STARTED))
    assert any(d.action is Action.DISABLE and d.reason is Reason.TRIAL_FAILED for d in again)


def test_after_the_record_the_ordinary_trip_rule_still_turns_speculation_off_and_schedules_a_first_trial() -> None:
    state = restarted(passed_trial().state.record)
    decisions = run([0.3] * 12, state, start=STARTED_AT + 1000)  # past the cooldown of the trial's start
    [off] = [d for d in decisions if d.toggles]
    assert (off.action, off.reason, decisions.index(off)) == (Action.DISABLE, Reason.LOW_ACCEPTANCE, 2)
    assert off.state.record.trial_attempts == 0  # a fresh failure, not the trial's second one


def test_after_the_record_the_cooldown_still_runs_from_the_toggle_that_started_the_trial() -> None:
    state = restarted(passed_trial().state.record)
    decisions = run([0.3] * 12, state)  # from 100 s after the trial started
    first = next(d for d in decisions if d.toggles)
    assert first.reason is Reason.LOW_ACCEPTANCE
    assert decisions.index(first) == 9  # 600 s after the start, as if the sidecar had never restarted


def test_a_pass_that_was_not_recorded_stays_passed_in_memory_and_is_asked_for_again() -> None:
    """A conflict or an API outage: the next window is judged by the ordinary rule, not the trial's bar."""
    decision = passed_trial()
    assert decision.unapplied is not None and decision.unapplied.record == TRIAL_STARTED
    retry = decide(window(0.52), decision.unapplied, TRIAL, STARTED_AT + 400)
    assert (retry.action, retry.reason, retry.prior) == (Action.RECORD, Reason.TRIAL_PASSED, TRIAL_STARTED)
    assert retry.state.trip_count == 0
    idle = decide(window(None), decision.unapplied, TRIAL, STARTED_AT + 460)  # no evidence; the pass still is
    assert idle.action is Action.RECORD


def test_a_failing_stretch_after_an_unrecorded_pass_disables_by_the_ordinary_rule() -> None:
    state = passed_trial().unapplied
    decisions = []
    for i in range(12):  # no record write ever lands: the runtime carries on with what the policy says to keep
        assert state is not None
        decision = decide(window(0.3), state, TRIAL, STARTED_AT + 1000 + 60 * i)
        decisions.append(decision)
        state = decision.unapplied if decision.unapplied is not None else decision.state
    assert [d.action for d in decisions[:2]] == [Action.RECORD] * 2
    assert (decisions[2].action, decisions[2].reason) == (Action.DISABLE, Reason.LOW_ACCEPTANCE)
    assert decisions[2].state.record.trial_attempts == 0


def test_a_dry_run_keeps_the_pass_in_memory_and_asks_for_no_write() -> None:
    dry = replace(TRIAL, dry_run=True)
    decisions = run([0.6, 0.6, 0.6, 0.52, 0.52, 0.6], PolicyState(speculation=True, record=TRIAL_STARTED), dry)
    assert [d.reason for d in decisions] == [Reason.TRIAL_RUNNING] * 2 + [Reason.TRIAL_PASSED] + [Reason.HEALTHY] * 3
    assert {d.action for d in decisions} == {Action.NONE}
    assert all(d.state.record == TRIAL_STARTED for d in decisions)


def test_a_human_pin_or_latch_on_the_target_wins_over_recording_the_pass() -> None:
    unapplied = passed_trial().unapplied
    assert unapplied is not None
    pinned = replace(unapplied, record=replace(TRIAL_STARTED, pin="on"))
    latched = replace(unapplied, record=replace(TRIAL_STARTED, latched="by hand"))
    assert decide(window(0.6), pinned, TRIAL, STARTED_AT + 400).action is Action.NONE
    assert decide(window(0.6), latched, TRIAL, STARTED_AT + 400).action is Action.NONE


def test_the_recorded_pass_reads_back_exactly_so_the_controller_keeps_its_in_memory_state() -> None:
    record = passed_trial().state.record
    assert restarted(record).record == record
    written = ann.to_annotations(record)
    assert written[ann.REASON] == "trial_passed" and json.loads(written[ann.HISTORY] or "[]")
