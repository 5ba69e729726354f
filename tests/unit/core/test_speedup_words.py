"""No misleading number: a modelled speedup says what it rests on, and never sits bare beside a 'disable'."""

from __future__ import annotations

import random

from sidecar.core import cost_prior, measured_speedup
from sidecar.core.cost_prior import SpeculativeSettings
from sidecar.core.measured_speedup import SpeedSample
from sidecar.core.speedup_words import breakeven_words, caveat, e2e_words, expected_words, measured_words


def slow_measurement() -> measured_speedup.MeasuredSpeedup:
    rng = random.Random(0)
    samples = [
        SpeedSample(float(i), on, 1.5, (0.06 if on else 0.05) * (1 + rng.gauss(0, 0.01)), 80.0,
                    mean_acceptance_length=1.4 if on else None, num_speculative_tokens=4 if on else None)
        for i in range(6) for on in (True, False)
    ]  # fmt: skip
    m = measured_speedup.measure(samples)
    assert m is not None
    return m


def test_the_issue_window_no_longer_shows_a_bare_gain_beside_a_disable() -> None:
    """Acceptance 0.095 with L 1.378 and no known draft cost: the report used to say 'expected speedup 1.378'."""
    words = expected_words(1.378, cost_prior.UNKNOWN)
    assert words.startswith("at most 1.378") and "unknown" in words and "upper bound" in words
    why = caveat(1.378, 0.095, 0.5, cost_prior.UNKNOWN, None)
    assert why is not None
    assert "0.095 is below 0.50" in why and "not measured yet" in why and "upper bound" in why


def test_an_assumed_cost_is_named_with_its_basis_and_a_configured_one_is_not_called_assumed() -> None:
    ngram = cost_prior.prior(SpeculativeSettings("ngram", None))
    assert "assumed" in expected_words(2.1, ngram) and "looked up" in expected_words(2.1, ngram)
    configured = expected_words(2.1, cost_prior.configured(0.1))
    assert "configured" in configured and "assumed" not in configured and not configured.startswith("at most")


def test_no_caveat_when_acceptance_passes_or_the_model_predicts_no_gain() -> None:
    assert caveat(2.0, 0.7, 0.5, cost_prior.UNKNOWN, None) is None
    assert caveat(0.9, 0.2, 0.5, cost_prior.configured(0.3), None) is None
    assert caveat(None, 0.2, 0.5, cost_prior.UNKNOWN, None) is None


def test_a_measurement_that_says_slower_is_quoted_in_the_caveat() -> None:
    m = slow_measurement()
    assert m.high < 1.0
    why = caveat(1.4, 0.1, 0.5, cost_prior.UNKNOWN, m)
    assert why is not None and "slower with speculation" in why
    assert measured_words(m).startswith(f"{m.speedup:.3f} [")
    assert "effective c" in breakeven_words(m)


def test_without_a_measurement_the_words_say_what_is_needed_and_how_far_along_it_is() -> None:
    assert "not measured yet" in measured_words(None)
    learned = [SpeedSample(0.0, True, 1.0, 0.05, 30.0)] * 4 + [SpeedSample(0.0, False, 9.0, 0.05, 30.0)]
    assert measured_words(None, learned).endswith("(4 on, 1 off so far)")
    assert breakeven_words(None) == "—"


def test_the_e2e_ratios_say_which_way_is_faster() -> None:
    samples = [
        SpeedSample(float(i), on, 1.5, 0.05, 80.0, e2e_p50=1.0 if on else 1.2, e2e_p99=3.0 if on else 2.4,
                    mean_acceptance_length=2.0 if on else None, num_speculative_tokens=4 if on else None)
        for i in range(3) for on in (True, False)
    ]  # fmt: skip
    m = measured_speedup.measure(samples)
    words = e2e_words(m)
    assert words.startswith("P50 1.20x, P99 0.80x") and "faster with speculation" in words
    assert e2e_words(None) == "—"


def test_a_measurement_clearly_below_one_is_called_slower_and_quoted_beside_a_passing_acceptance() -> None:
    """On a CPU speculation can lose at acceptance 0.53 (docs/model-family.md): the modelled gain is not bare."""
    m = slow_measurement()
    assert m.finding == "slower"
    assert "slower with speculation" in measured_words(m)
    why = caveat(1.7, 0.53, 0.5, cost_prior.configured(0.2), m)
    assert why is not None and "slower with speculation at acceptance 0.530" in why and "1.70x" in why


def test_an_interval_holding_one_is_no_clear_difference_and_adds_no_caveat_at_a_passing_acceptance() -> None:
    rng = random.Random(1)
    samples = [
        SpeedSample(float(i), on, 1.5, 0.05 * (1 + rng.gauss(0, 0.05)), 80.0,
                    mean_acceptance_length=2.0 if on else None, num_speculative_tokens=4 if on else None)
        for i in range(6) for on in (True, False)
    ]  # fmt: skip
    m = measured_speedup.measure(samples)
    assert m is not None and m.low < 1.0 < m.high
    assert m.finding == "unclear" and "no clear difference yet" in measured_words(m)
    assert caveat(1.7, 0.53, 0.5, cost_prior.configured(0.2), m) is None
