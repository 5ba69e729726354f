"""The load-aware schedule of K (sidecar.core.load_schedule): per-band verdicts, the cut and its config value."""

from __future__ import annotations

import random

import pytest

from sidecar.core import cost_prior
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.load_schedule import (
    BandVerdict,
    ScheduleSource,
    batch_band,
    propose_schedule,
)
from sidecar.core.measured_speedup import SpeedSample


def windows(
    running: float, speedup: float, *, count: int = 4, on: bool = True, off: bool = True, length: float = 2.0
) -> list[SpeedSample]:
    """``count`` windows of each state at ``running``, the on TPOT ``speedup`` times faster, a little noise."""
    rng = random.Random(f"{running}-{speedup}")
    out: list[SpeedSample] = []
    for _ in range(count):
        base = 0.05 * (1 + running / 16) * rng.uniform(0.99, 1.01)
        if off:
            out.append(SpeedSample(0.0, False, running, base, 50.0))
        if on:
            out.append(
                SpeedSample(0.0, True, running, base / speedup * rng.uniform(0.99, 1.01), 50.0,
                            mean_acceptance_length=length, num_speculative_tokens=3)
            )  # fmt: skip
    return out


def test_batch_bands_are_one_two_then_powers_of_two() -> None:
    assert [batch_band(r) for r in (0.2, 1.0, 1.6, 2.4, 3.0, 4.4, 5.0, 8.0, 9.0, 16.0, 17.0)] == [
        (1, 1), (1, 1), (2, 2), (2, 2), (3, 4), (3, 4), (5, 8), (5, 8), (9, 16), (9, 16), (17, 32),
    ]  # fmt: skip


def test_speculation_that_pays_at_low_load_and_hurts_at_high_load_is_cut_at_the_last_paying_band() -> None:
    samples = windows(1, 1.6) + windows(2, 1.4) + windows(3.5, 1.2) + windows(6, 0.8) + windows(12, 0.6)
    plan = propose_schedule(samples, k=3, max_num_seqs=64)
    assert plan.cut == 4
    assert plan.source is ScheduleSource.MEASURED
    assert plan.as_config_value() == [[1, 4, 3], [5, 64, 0]]
    assert [b.verdict for b in plan.bands] == [BandVerdict.PAYS] * 3 + [BandVerdict.HURTS] * 2
    assert "3-4" in plan.reason and "5-8" in plan.reason
    assert plan.bands[0].low_speedup is not None and plan.bands[0].low_speedup > 1.0
    assert plan.as_json()["value"] == [[1, 4, 3], [5, 64, 0]]


def test_a_cut_band_that_is_only_not_shown_to_lose_is_not_called_paying() -> None:
    # As on the engine (docs/benchmarks.md): pays at 1-2, even at 5-8 with an interval holding 1, hurts at 9-16.
    even = [
        SpeedSample(0.0, on, 6.0, tpot, 50.0, mean_acceptance_length=2.0, num_speculative_tokens=3)
        for on, tpot in [(True, 0.056), (True, 0.064), (False, 0.058), (False, 0.066)]
    ]
    plan = propose_schedule(windows(1, 1.6) + windows(2, 1.4) + even + windows(12, 0.8), k=3, max_num_seqs=64)
    assert plan.bands[2].verdict is BandVerdict.UNCLEAR
    assert plan.cut == 8
    assert plan.reason.startswith("speculation pays at batch size 2 (")
    assert "is not shown to lose at 5-8 (" in plan.reason and "hurts at 9-16" in plan.reason
    assert "pays at batch size 5-8" not in plan.reason


def test_a_right_sized_k_is_the_k_kept_below_the_cut() -> None:
    plan = propose_schedule(windows(1, 1.5) + windows(6, 0.7), k=2, max_num_seqs=None)
    assert plan.as_config_value() == [[1, 1, 2], [2, 256, 0]]


def test_speculation_that_pays_everywhere_gets_no_schedule() -> None:
    plan = propose_schedule(windows(1, 1.6) + windows(6, 1.3) + windows(12, 1.1), k=3, max_num_seqs=64)
    assert plan.cut is None and plan.as_config_value() is None
    assert "not shown to hurt" in plan.reason


def test_speculation_that_pays_nowhere_gets_no_schedule_and_points_at_switching_it_off() -> None:
    plan = propose_schedule(windows(1, 0.9) + windows(6, 0.7), k=3, max_num_seqs=64)
    assert plan.cut is None
    assert "switching speculation off" in plan.reason


def test_one_band_of_data_is_too_thin_and_says_what_it_has() -> None:
    plan = propose_schedule(windows(1, 1.6) + windows(6, 0.5, count=1), k=3, max_num_seqs=64)
    assert plan.cut is None
    assert plan.reason.startswith("data too thin")
    assert "5-8: 1 on / 1 off" in plan.reason


def test_an_interval_holding_one_is_unclear_and_neither_pays_nor_hurts() -> None:
    noisy = [
        SpeedSample(0.0, on, 6.0, tpot, 50.0, mean_acceptance_length=2.0, num_speculative_tokens=3)
        for on, tpot in [(True, 0.05), (True, 0.09), (False, 0.06), (False, 0.08)]
    ]
    plan = propose_schedule(windows(1, 1.6) + noisy, k=3, max_num_seqs=64)
    assert plan.bands[1].verdict is BandVerdict.UNCLEAR
    assert plan.cut is None


def test_bands_with_only_speculation_on_use_the_prior_and_say_so() -> None:
    # Acceptance falls with load: L = 2.0 at 1, 1.2 at 6; c = 0.1 and K = 3 break even at L = 1.3.
    cost = DraftCost(0.1, CostSource.ASSUMED, "EAGLE head")
    samples = windows(1, 1.0, off=False, length=2.0) + windows(6, 1.0, off=False, length=1.2)
    plan = propose_schedule(samples, k=3, max_num_seqs=32, cost=cost)
    assert plan.cut == 1
    assert plan.source is ScheduleSource.PRIOR
    assert [b.source for b in plan.bands] == [ScheduleSource.PRIOR] * 2
    assert plan.bands[0].speedup == pytest.approx(2.0 / 1.3)
    assert "prior" in plan.reason


def test_an_unknown_draft_cost_gives_no_prior_verdict() -> None:
    samples = windows(1, 1.0, off=False) + windows(6, 1.0, off=False, length=1.1)
    plan = propose_schedule(samples, k=3, max_num_seqs=32, cost=cost_prior.UNKNOWN)
    assert all(b.verdict is BandVerdict.UNKNOWN for b in plan.bands)
    assert plan.cut is None


def test_a_measured_band_decides_over_the_prior_when_both_states_have_data() -> None:
    cost = DraftCost(0.0, CostSource.ASSUMED, "n-gram")  # the prior says every band pays
    plan = propose_schedule(windows(1, 1.5) + windows(6, 0.7), k=3, max_num_seqs=32, cost=cost)
    assert [b.source for b in plan.bands] == [ScheduleSource.MEASURED] * 2
    assert plan.cut == 1 and plan.source is ScheduleSource.MEASURED


def test_a_cut_at_max_num_seqs_is_no_schedule() -> None:
    plan = propose_schedule(windows(1, 1.5) + windows(3, 1.4) + windows(6, 0.7), k=3, max_num_seqs=4)
    assert plan.cut is None and "max_num_seqs" in plan.reason


def test_without_speculation_there_is_no_k_to_schedule() -> None:
    plan = propose_schedule(windows(1, 1.5) + windows(6, 0.7), k=None, max_num_seqs=32)
    assert plan.cut is None and plan.as_config_value() is None


def test_speculation_paying_again_above_the_cut_is_reported() -> None:
    plan = propose_schedule(windows(1, 1.5) + windows(6, 0.7) + windows(24, 1.3), k=3, max_num_seqs=64)
    assert plan.cut == 1
    assert "pays again at 17-32" in plan.reason
