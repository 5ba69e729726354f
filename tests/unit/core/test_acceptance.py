"""Acceptance formulas, checked against a Monte-Carlo simulation of i.i.d. acceptance where they model one."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from sidecar.core import acceptance


def simulate(alpha: float, k: int, drafts: int, seed: int) -> tuple[int, int, list[int]]:
    """vLLM's counting for ``drafts`` verify steps of k draft tokens, each accepted with probability alpha
    until the first rejection: (accepted tokens, draft tokens, accepted per position)."""
    rng = random.Random(seed)
    accepted = 0
    per_position = [0] * k
    for _ in range(drafts):
        for position in range(k):
            if rng.random() >= alpha:
                break
            accepted += 1
            per_position[position] += 1
    return accepted, drafts * k, per_position


@pytest.mark.parametrize(("alpha", "k"), [(0.3, 1), (0.5, 3), (0.7, 4), (0.9, 5), (0.8, 8)])
def test_iid_acceptance_ratio_matches_a_simulation_of_iid_acceptance(alpha: float, k: int) -> None:
    drafts = 40_000
    accepted, draft_tokens, per_position = simulate(alpha, k, drafts, seed=int(alpha * 100) + k)
    simulated_ratio = accepted / draft_tokens
    # Accepted tokens per draft have variance below k²/4; four standard errors of the ratio.
    tolerance = 4 * math.sqrt(k * k / 4 / drafts) / k
    assert acceptance.iid_acceptance_ratio(alpha, k) == pytest.approx(simulated_ratio, abs=tolerance)
    # vLLM's L = 1 + accepted / drafts estimates the paper's expected tokens per step.
    simulated_length = acceptance.mean_acceptance_length(accepted, drafts)
    assert simulated_length is not None
    assert acceptance.expected_length(alpha, k) == pytest.approx(simulated_length, abs=k * tolerance)
    # Per-position rates estimate α^(i+1); the first is α̂.
    rates = acceptance.position_acceptance(per_position, drafts)
    for i, rate in enumerate(rates):
        assert rate == pytest.approx(alpha ** (i + 1), abs=4 * math.sqrt(0.25 / drafts))


def test_the_ratio_falls_as_k_grows_with_the_same_draft_quality() -> None:
    ratios = [acceptance.iid_acceptance_ratio(0.8, k) for k in range(1, 9)]
    assert ratios[0] == pytest.approx(0.8)
    assert all(a > b for a, b in itertools.pairwise(ratios))


def test_perfect_and_useless_drafts() -> None:
    assert acceptance.iid_acceptance_ratio(1.0, 4) == 1.0
    assert acceptance.expected_length(1.0, 4) == 5.0
    assert acceptance.iid_acceptance_ratio(0.0, 4) == 0.0
    assert acceptance.expected_length(0.0, 4) == 1.0


def test_ratio_is_none_without_a_positive_denominator() -> None:
    assert acceptance.ratio(5, 10) == 0.5
    assert acceptance.ratio(0, 10) == 0.0  # a real zero
    assert acceptance.ratio(5, 0) is None
    assert acceptance.ratio(None, 10) is None
    assert acceptance.ratio(5, None) is None


def test_mean_acceptance_length_counts_the_bonus_token() -> None:
    assert acceptance.mean_acceptance_length(300, 100) == 4.0
    assert acceptance.mean_acceptance_length(0, 100) == 1.0
    assert acceptance.mean_acceptance_length(10, 0) is None


def test_position_acceptance_is_empty_without_drafts() -> None:
    assert acceptance.position_acceptance([8, 4], 10) == (0.8, 0.4)
    assert acceptance.position_acceptance([8, 4], 0) == ()
    assert acceptance.position_acceptance([8, 4], None) == ()


def test_breakeven_is_one_plus_k_times_the_draft_cost_ratio() -> None:
    assert acceptance.breakeven_acceptance_length(4, 0.25) == 2.0
    assert acceptance.breakeven_acceptance_length(3, 0.0) == 1.0  # ngram: any accepted token pays
    assert acceptance.breakeven_acceptance_length(None, 0.25) is None
    assert acceptance.breakeven_acceptance_length(0, 0.25) is None


@pytest.mark.parametrize(("alpha", "k", "c"), [(0.6, 4, 0.1), (0.8, 3, 0.05), (0.5, 5, 0.3)])
def test_expected_speedup_at_the_iid_length_is_the_papers_walltime_improvement(alpha: float, k: int, c: float) -> None:
    length = acceptance.expected_length(alpha, k)
    paper = (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))  # Leviathan et al. 2023, Theorem 3.8
    assert acceptance.expected_speedup(length, k, c) == pytest.approx(paper)


def test_speculation_pays_exactly_when_the_length_beats_breakeven() -> None:
    k, c = 4, 0.25
    breakeven = acceptance.breakeven_acceptance_length(k, c)
    assert breakeven is not None
    assert acceptance.expected_speedup(breakeven, k, c) == pytest.approx(1.0)
    above = acceptance.expected_speedup(breakeven + 0.1, k, c)
    below = acceptance.expected_speedup(breakeven - 0.1, k, c)
    assert above is not None and above > 1.0
    assert below is not None and below < 1.0


def test_expected_speedup_is_none_when_length_or_k_is_unknown() -> None:
    assert acceptance.expected_speedup(None, 4, 0.1) is None
    assert acceptance.expected_speedup(3.0, None, 0.1) is None
    assert acceptance.expected_speedup(3.0, 0, 0.1) is None
