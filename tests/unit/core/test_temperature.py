from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.temperature import DEFAULT, INVALID, ZERO, TemperatureBuckets, parse_edges


def test_parse_edges_reads_the_documented_form_and_drops_zero_because_zero_is_always_its_own_bucket() -> None:
    assert parse_edges("0,0.3,0.7,1.0,2.0") == (0.3, 0.7, 1.0, 2.0)


def test_parse_edges_sorts_and_deduplicates() -> None:
    assert parse_edges(" 1.0, 0.5 ,0.5,") == (0.5, 1.0)


@pytest.mark.parametrize("text", ["0,abc", "-0.5", "inf", "nan"])
def test_parse_edges_rejects_what_is_not_a_finite_non_negative_number(text: str) -> None:
    with pytest.raises(ValueError, match="edge"):
        parse_edges(text)


def test_zero_has_its_own_bucket_even_when_the_edges_do_not_mention_it() -> None:
    buckets = TemperatureBuckets((0.5,))
    assert buckets.label_for(0.0) == ZERO
    assert buckets.label_for(0.01) == "(0,0.5)"


def test_a_request_without_temperature_is_counted_under_default() -> None:
    assert TemperatureBuckets().label_for(None) == DEFAULT


def test_an_edge_value_belongs_to_the_interval_it_opens() -> None:
    buckets = TemperatureBuckets((0.3, 0.7, 1.0))
    assert buckets.label_for(0.3) == "[0.3,0.7)"
    assert buckets.label_for(0.7) == "[0.7,1)"
    assert buckets.label_for(1.0) == "[1,+Inf)"
    assert buckets.label_for(0.2999) == "(0,0.3)"


def test_temperatures_above_the_last_edge_share_the_open_ended_bucket() -> None:
    assert TemperatureBuckets((0.5, 1.0)).label_for(1.7) == "[1,+Inf)"


def test_negative_or_nan_temperatures_are_labelled_invalid_rather_than_guessed() -> None:
    buckets = TemperatureBuckets()
    assert buckets.label_for(-0.1) == INVALID
    assert buckets.label_for(math.nan) == INVALID


def test_labels_lists_every_bucket_in_temperature_order() -> None:
    assert TemperatureBuckets((0.5, 1.0)).labels == ("0", "(0,0.5)", "[0.5,1)", "[1,+Inf)", "default")


def test_edges_must_already_be_normalized_when_given_directly() -> None:
    with pytest.raises(ValueError, match="sorted"):
        TemperatureBuckets((1.0, 0.5))


def _bounds(label: str) -> tuple[float, bool, float]:
    """(low, low_inclusive, high) read back from an interval label."""
    low_text, high_text = label[1:-1].split(",")
    return float(low_text), label.startswith("["), math.inf if high_text == "+Inf" else float(high_text)


@given(
    edges=st.lists(st.floats(min_value=0.01, max_value=5, allow_nan=False), min_size=1, max_size=6, unique=True),
    temperature=st.floats(min_value=1e-6, max_value=10, allow_nan=False),
)
def test_every_positive_temperature_lands_in_the_one_interval_that_contains_it(
    edges: list[float], temperature: float
) -> None:
    buckets = TemperatureBuckets(tuple(sorted(edges)))
    label = buckets.label_for(temperature)
    low, inclusive, high = _bounds(label)
    assert (low <= temperature if inclusive else low < temperature) and temperature < high
    assert label in buckets.labels
