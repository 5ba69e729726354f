"""reduce-k: the policy lowers num_speculative_tokens instead of disabling when the first positions still pay."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.policy import Action, Observation, PolicyConfig, PolicyState, Reason, decide
from sidecar.core.right_size_k import right_size
from tests.unit.core.test_policy import T0, actions, run

DRAFT_MODEL = DraftCost(0.16, CostSource.ASSUMED, "a draft model")
# Overall acceptance (0.75 + 0.3 + 0.1 + 0.03 + 0.01) / 5 = 0.24: below 0.5. The first position alone reads 0.75.
STEEP = (0.75, 0.3, 0.1, 0.03, 0.01)
# Flat and low everywhere: no K reads 0.55.
FLAT = (0.3, 0.2, 0.15, 0.1, 0.05)
REDUCE = PolicyConfig(reduce_k=True)


def low(rates: tuple[float, ...], cost: DraftCost = DRAFT_MODEL, drafts: float = 2000.0) -> Observation:
    return Observation(
        engine_up=True,
        speculation=True,
        acceptance_ratio=sum(rates) / len(rates),
        draft_tokens=drafts * len(rates),
        drafts=drafts,
        position_acceptance=rates,
        num_speculative_tokens=len(rates),
        window_seconds=60.0,
        right_size=right_size(rates, drafts, cost),
    )


def test_steep_per_position_acceptance_lowers_k_instead_of_disabling_and_says_why() -> None:
    decisions = run([low(STEEP)] * 3, config=REDUCE)
    assert actions(decisions) == ["none", "none", "reduce-k"]
    last = decisions[-1]
    assert last.reason is Reason.LOW_ACCEPTANCE and last.write
    # K = 1 is the only K reading >= 0.55 (threshold + hysteresis): K = 2 reads (0.75 + 0.3) / 2 = 0.525.
    assert last.k == 1
    assert "instead of turning speculation off" in last.detail
    assert "acceptance 0.75 (>= 0.55)" in last.detail and "c = 0.16, assumed" in last.detail
    # Speculation stays on; the toggle is in the history, so the cooldown and the flap budget count it.
    assert last.state.speculation and last.state.record.state == "on"
    assert last.state.record.history[-1].action == "reduce-k"
    assert last.toggles


def test_without_the_opt_in_the_same_windows_disable() -> None:
    assert actions(run([low(STEEP)] * 3)) == ["none", "none", "disable"]


def test_flat_acceptance_disables_and_the_reason_says_why_no_smaller_k_would_do() -> None:
    decisions = run([low(FLAT)] * 3, config=REDUCE)
    assert actions(decisions) == ["none", "none", "disable"]
    assert "off rather than a smaller K: no K below 5 reads acceptance >= 0.55" in decisions[-1].detail


def test_an_unknown_draft_cost_never_lowers_k() -> None:
    unknown = DraftCost(0.0, CostSource.UNKNOWN, "unknown")
    assert actions(run([low(STEEP, unknown)] * 3, config=REDUCE))[-1] == "disable"


def test_a_dear_draft_that_does_not_pay_at_any_k_disables() -> None:
    dear = DraftCost(0.9, CostSource.CONFIGURED, "set")
    assert actions(run([low(STEEP, dear)] * 3, config=REDUCE))[-1] == "disable"


def test_k_is_lowered_once_and_the_next_step_down_is_off() -> None:
    lowered = ControlRecord(state="on", reduced={"version": 1, "key": "num_speculative_tokens"})
    decisions = run([low(STEEP)] * 3, PolicyState(speculation=True, record=lowered), config=REDUCE)
    assert actions(decisions)[-1] == "disable"
    assert "lowered already" in decisions[-1].detail


def test_a_latency_tail_failure_is_not_answered_with_a_smaller_k() -> None:
    config = replace(REDUCE, divergence_factor=1.5)
    tail = replace(low(STEEP), p99_p50_ratio={"tpot": 4.0}, p99_p50_baseline={"tpot": 1.5})
    decisions = run([tail] * 3, config=config)
    assert actions(decisions)[-1] == "disable"
    assert "latency tail" in decisions[-1].detail


def test_a_lowered_k_waits_out_the_cooldown_and_spends_the_flap_budget() -> None:
    record = ControlRecord(
        state="on",
        changed_at=T0 - 10,
        changed_by=By.SIDECAR,
        history=tuple(Toggle(T0 - 100 * i, "disable", By.SIDECAR, "low_acceptance") for i in range(1, 5)),
    )
    state = PolicyState(speculation=True, record=record)
    held = run([low(STEEP)] * 3, state, config=REDUCE)
    assert held[-1].reason is Reason.COOLDOWN
    later = decide(low(STEEP), replace(held[-1].state, last_window_at=None), REDUCE, T0 + 1000)
    assert later.action is Action.LATCH and "would reduce-k" in later.detail


def test_a_dry_run_decides_the_smaller_k_but_writes_nothing() -> None:
    decisions = run([low(STEEP)] * 3, config=replace(REDUCE, dry_run=True))
    assert actions(decisions)[-1] == "reduce-k"
    assert not decisions[-1].write
