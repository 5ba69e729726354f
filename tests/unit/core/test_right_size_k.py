"""Right-sizing K from per-position acceptance and the draft cost (docs/math.md, 'Right-sizing K')."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import cost_prior
from sidecar.core import measured_speedup as ms
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.right_size_k import draft_cost_for, reduce_instead_of_disable, right_size
from tests.unit.core.test_measured_speedup import windows

DRAFT_MODEL = DraftCost(0.16, CostSource.ASSUMED, "Llama-3.2-1B under Llama-3.1-8B")


def iid(alpha: float, k: int) -> list[float]:
    return [alpha ** (i + 1) for i in range(k)]


def test_a_draft_model_at_alpha_one_half_is_best_at_two_tokens_of_five() -> None:
    size = right_size(iid(0.5, 5), 10_000, DRAFT_MODEL)
    assert size is not None
    # S(1) = 1.5/1.16 = 1.293, S(2) = 1.75/1.32 = 1.326, S(3) = 1.875/1.48 = 1.267
    assert size.recommended_k == 2
    assert size.recommended.speedup == pytest.approx(1.75 / 1.32)
    assert size.current.speedup == pytest.approx((1 + sum(iid(0.5, 5))) / 1.8)
    assert size.distinguishable
    assert size.gain > 1.15
    assert "K = 2" in size.words and "assumed" in size.words


def test_the_expected_length_at_the_current_k_is_the_measured_mean_acceptance_length() -> None:
    rates = [0.8, 0.6, 0.3, 0.1]
    size = right_size(rates, 500, cost_prior.configured(0.05))
    assert size is not None
    assert size.current.mean_acceptance_length == pytest.approx(1 + sum(rates))
    assert size.current.acceptance_ratio == pytest.approx(sum(rates) / 4)
    assert size.option(1).acceptance_ratio == pytest.approx(0.8)


def test_free_drafts_never_recommend_fewer_tokens_and_say_why() -> None:
    size = right_size(iid(0.3, 6), 10_000, cost_prior.UNKNOWN)
    assert size is not None
    assert size.recommended_k == 6
    assert not size.distinguishable
    assert "unknown" in size.words and "--draft-cost-ratio" in size.words
    assert reduce_instead_of_disable(size, threshold=0.2) is None


def test_few_drafts_leave_the_choice_open_and_many_drafts_settle_it() -> None:
    rates = iid(0.6, 4)
    few = right_size(rates, 20, cost_prior.configured(0.12))
    many = right_size(rates, 100_000, cost_prior.configured(0.12))
    assert few is not None and many is not None
    assert few.recommended_k == many.recommended_k
    assert few.high - few.low > many.high - many.low
    assert not few.distinguishable


def test_a_measured_cost_interval_widens_the_plausible_range() -> None:
    rates = iid(0.6, 5)
    cost = DraftCost(0.15, CostSource.MEASURED, "measured")
    narrow = right_size(rates, 1_000_000, cost)
    wide = right_size(rates, 1_000_000, cost, cost_interval=(0.0, 0.6))
    assert narrow is not None and wide is not None
    assert wide.low == 1 and wide.high == 5
    assert (narrow.low, narrow.high) != (1, 5)


def test_no_drafts_or_no_positions_is_unknown_not_a_recommendation() -> None:
    assert right_size([], 100, DRAFT_MODEL) is None
    assert right_size([0.5], 0, DRAFT_MODEL) is None
    assert right_size([0.5], None, DRAFT_MODEL) is None
    assert right_size([math.nan], 100, DRAFT_MODEL) is None


def test_rates_that_rise_with_position_are_read_as_the_prefix_they_must_be() -> None:
    size = right_size([0.5, 0.7], 1000, DRAFT_MODEL)
    assert size is not None
    assert size.option(2).mean_acceptance_length == pytest.approx(2.0)


def test_the_interval_of_the_speedup_matches_a_simulation_of_prefix_acceptance() -> None:
    """The standard error from the rates alone agrees with the spread of simulated windows."""
    rng = random.Random(7)
    alpha, k, drafts = 0.55, 4, 400
    c = 0.1
    speedups = []
    for _ in range(400):
        accepted = [0] * k
        for _d in range(drafts):
            for i in range(k):
                if rng.random() >= alpha:
                    break
                accepted[i] += 1
        speedups.append((1 + sum(accepted[:2]) / drafts) / (1 + 2 * c))
    mean = sum(speedups) / len(speedups)
    sd = math.sqrt(sum((s - mean) ** 2 for s in speedups) / (len(speedups) - 1))
    size = right_size(iid(alpha, k), drafts, cost_prior.configured(c))
    assert size is not None
    half = size.option(2).speedup_high - size.option(2).speedup
    assert half / 1.96 == pytest.approx(sd, rel=0.15)


@settings(max_examples=200, deadline=None)
@given(
    rates=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    drafts=st.floats(1, 1e6),
    c=st.floats(0, 1),
)
def test_the_recommendation_is_the_best_option_and_always_plausible(
    rates: list[float], drafts: float, c: float
) -> None:
    size = right_size(rates, drafts, cost_prior.configured(c))
    assert size is not None
    assert 1 <= size.low <= size.recommended_k <= size.high <= size.current_k == len(rates)
    best = max(o.speedup for o in size.options)
    assert size.recommended.speedup == pytest.approx(best)
    assert size.recommended.plausible
    assert size.distinguishable == (not size.current.plausible)


def test_a_reduced_k_replaces_a_disable_only_when_its_first_positions_clear_the_threshold_and_pay() -> None:
    # Overall ratio (0.75+0.3+0.1+0.03+0.01)/5 = 0.24 < 0.5; the first position alone reads 0.75.
    rates = [0.75, 0.3, 0.1, 0.03, 0.01]
    size = right_size(rates, 5000, DRAFT_MODEL)
    choice = reduce_instead_of_disable(size, threshold=0.5)
    assert choice is not None
    # K = 2 reads (0.75 + 0.3) / 2 = 0.525 and has the higher speedup: 2.05 / 1.32 = 1.55 against 1.75 / 1.16.
    assert choice.k == 2
    assert choice.speedup_low > 1.05
    # A stricter bar (the threshold plus the trial's hysteresis) leaves K = 1.
    stricter = reduce_instead_of_disable(size, threshold=0.55)
    assert stricter is not None and stricter.k == 1
    # With a dearer draft the same window does not pay at any K: off is the better move.
    dear = right_size(rates, 5000, DraftCost(0.8, CostSource.ASSUMED, "a big draft"))
    assert reduce_instead_of_disable(dear, threshold=0.5) is None
    # And when no first positions clear the threshold either.
    assert reduce_instead_of_disable(right_size(iid(0.3, 5), 5000, DRAFT_MODEL), threshold=0.5) is None


def test_a_measured_c_takes_over_from_the_prior_only_once_established() -> None:
    assert draft_cost_for(DRAFT_MODEL, None) == (DRAFT_MODEL, None)
    rng = random.Random(1)
    samples = windows(rng, 8, on=True, running=3, base=0.05, length=2.2, cost=0.25, noise=0.03)
    samples += windows(rng, 8, on=False, running=3, base=0.05, length=2.2, cost=0.25, noise=0.03)
    measured = ms.measure(samples)
    assert measured is not None and measured.established
    cost, interval = draft_cost_for(DRAFT_MODEL, measured)
    assert cost.source is CostSource.MEASURED
    assert cost.ratio == pytest.approx(0.25, abs=0.03)
    assert interval is not None and interval[0] < cost.ratio < interval[1]
    thin = ms.measure(samples[:3] + samples[8:11])
    assert thin is not None and not thin.established
    assert draft_cost_for(DRAFT_MODEL, thin) == (DRAFT_MODEL, None)
