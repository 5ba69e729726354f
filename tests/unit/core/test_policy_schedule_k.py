"""schedule-k: the policy writes a measured load schedule of K, and says why it chose it over reduce-k or off."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.load_schedule import propose_schedule
from sidecar.core.policy import Action, Observation, PolicyConfig, PolicyState, Reason, decide
from sidecar.core.right_size_k import right_size
from tests.unit.core.test_load_schedule import windows
from tests.unit.core.test_policy import T0, actions, run
from tests.unit.core.test_policy_reduce_k import STEEP, low

SCHEDULE = PolicyConfig(schedule_k=True)
# Speculation pays at batch size 1 (1.6x) and 2 (1.4x) and hurts at 5-8 (0.8x), measured.
LOAD_DEPENDENT = windows(1, 1.6) + windows(2, 1.4) + windows(6, 0.8)
PLAN = propose_schedule(LOAD_DEPENDENT, k=5, max_num_seqs=64)
EVERYWHERE = propose_schedule(windows(1, 1.6) + windows(6, 1.3), k=5, max_num_seqs=64)
PRIOR = propose_schedule(
    windows(1, 1.0, off=False, length=2.0) + windows(6, 1.0, off=False, length=1.2),
    k=3,
    max_num_seqs=64,
    cost=DraftCost(0.1, CostSource.ASSUMED, "EAGLE head"),
)


def passing(plan: object = PLAN) -> Observation:
    return Observation(
        engine_up=True, speculation=True, acceptance_ratio=0.7, draft_tokens=1000.0, window_seconds=60.0,
        schedule=plan,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_measured_schedule_is_written_while_the_windows_pass() -> None:
    [decision] = run([passing()], config=SCHEDULE)
    assert decision.action is Action.SCHEDULE_K and decision.write
    assert decision.reason is Reason.LOAD_SCHEDULE
    assert decision.schedule == ((1, 2, 5), (3, 64, 0))
    assert "up to batch size 2" in decision.detail and "hurts at 5-8" in decision.detail
    assert decision.toggles  # counted by the flap budget like any write that rolls the engine


def test_without_the_opt_in_no_schedule_is_written() -> None:
    assert actions(run([passing()] * 3)) == ["none"] * 3


def test_on_failing_windows_a_measured_schedule_goes_first_without_waiting_for_the_trip_and_keeps_its_reason() -> None:
    # The schedule rests on the measured speedup per load band, not on this run of windows: it needs no trip.
    observation = replace(low(STEEP), schedule=PLAN)
    config = PolicyConfig(schedule_k=True, reduce_k=True)
    decisions = run([observation] * 3, state=PolicyState(speculation=True, record=_recent_change()), config=config)
    assert actions(decisions) == ["schedule-k", "none", "none"]  # then the rollout of the new config
    assert decisions[0].reason is Reason.LOW_ACCEPTANCE
    assert "rather than turning speculation off" in decisions[0].detail
    assert decisions[1].reason is Reason.ROLLOUT_IN_PROGRESS


def test_a_schedule_from_the_prior_alone_is_shown_but_not_written_and_the_disable_says_why() -> None:
    observation = replace(low(STEEP), schedule=PRIOR)
    decisions = run([observation] * 3, config=SCHEDULE)
    assert actions(decisions) == ["none", "none", "disable"]
    assert "not a load schedule: only the prior proposes one" in decisions[-1].detail


def test_speculation_paying_everywhere_gives_no_schedule_and_the_disable_says_why() -> None:
    observation = replace(low(STEEP), schedule=EVERYWHERE)
    decisions = run([observation] * 3, config=SCHEDULE)
    assert actions(decisions) == ["none", "none", "disable"]
    assert "not a load schedule: speculation is not shown to hurt" in decisions[-1].detail


def test_a_schedule_in_place_is_not_written_again_and_reduce_k_steps_aside() -> None:
    record = ControlRecord(scheduled={"version": 1}, state="on")
    config = PolicyConfig(schedule_k=True, reduce_k=True)
    assert actions(run([passing()] * 2, state=PolicyState(speculation=True, record=record), config=config)) == [
        "none",
        "none",
    ]
    tripping = replace(
        low(STEEP), schedule=PLAN, right_size=right_size(STEEP, 2000.0, DraftCost(0.16, CostSource.ASSUMED, "d"))
    )
    decisions = run([tripping] * 3, state=PolicyState(speculation=True, record=record), config=config)
    assert actions(decisions)[-1] == "disable"
    assert "a schedule of K is in place already" in decisions[-1].detail


def test_the_cooldown_and_a_manual_enable_hold_a_schedule_back() -> None:
    just_now = ControlRecord(state="on", changed_at=T0 - 60, changed_by=By.SIDECAR)
    assert actions(run([passing()], state=PolicyState(speculation=True, record=just_now), config=SCHEDULE)) == ["none"]
    by_hand = ControlRecord(state="on", changed_at=T0 - 900, changed_by=By.MANUAL)
    assert actions(run([passing()], state=PolicyState(speculation=True, record=by_hand), config=SCHEDULE)) == ["none"]
    later = decide(passing(), PolicyState(speculation=True, record=by_hand), SCHEDULE, T0 + 3600)
    assert later.action is Action.SCHEDULE_K


def test_a_spent_flap_budget_latches_instead_of_writing_a_schedule() -> None:
    history = tuple(Toggle(T0 - 3000 + i * 600, "disable", By.SIDECAR, "low_acceptance") for i in range(4))
    record = ControlRecord(state="on", changed_at=T0 - 1200, changed_by=By.SIDECAR, history=history)
    [decision] = run([passing()], state=PolicyState(speculation=True, record=record), config=SCHEDULE)
    assert decision.action is Action.LATCH and decision.reason is Reason.FLAP_BUDGET


def test_a_dry_run_decides_the_schedule_and_writes_nothing() -> None:
    [decision] = run([passing()], config=replace(SCHEDULE, dry_run=True))
    assert decision.action is Action.SCHEDULE_K and not decision.write


def _recent_change() -> ControlRecord:
    """A toggle long enough ago to be out of the cooldown and the flap period."""
    return ControlRecord(state="on", changed_at=T0 - 7 * 3600, changed_by=By.SIDECAR)
