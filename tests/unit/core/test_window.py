"""Counter and histogram increases with resets, between two snapshots and over a window of many."""

from __future__ import annotations

from sidecar.core.catalog import Role
from sidecar.core.snapshot import Counter, CounterKey, Histogram, HistogramKey
from sidecar.core.window import (
    counter_increase,
    counter_window_increases,
    histogram_increase,
    histogram_window_increases,
    sum_histograms,
)

INF = float("inf")
E0: CounterKey = (Role.DRAFT_TOKENS, (("engine", "0"),), "")
E1: CounterKey = (Role.DRAFT_TOKENS, (("engine", "1"),), "")
TTFT: HistogramKey = ("ttft", (("engine", "0"),))


def test_counter_increase_is_the_difference_when_nothing_restarted() -> None:
    assert counter_increase(Counter(100.0, 5.0), Counter(160.0, 5.0)) == 60.0


def test_counter_that_went_down_counts_its_new_value_as_the_increase() -> None:
    assert counter_increase(Counter(100.0), Counter(30.0)) == 30.0


def test_counter_with_a_new_created_time_restarted_even_when_its_value_is_larger() -> None:
    assert counter_increase(Counter(100.0, created=5.0), Counter(130.0, created=9.0)) == 130.0


def test_counter_without_created_times_is_judged_by_its_value_alone() -> None:
    # Multiprocess mode has no _created: a restart that already passed the old value cannot be seen.
    assert counter_increase(Counter(100.0, None), Counter(130.0, None)) == 30.0
    assert counter_increase(Counter(100.0, 5.0), Counter(130.0, None)) == 30.0


def test_counter_absent_before_started_at_zero() -> None:
    assert counter_increase(None, Counter(42.0)) == 42.0


def test_window_adds_up_the_increase_before_and_after_a_reset_inside_it() -> None:
    history = [{E0: Counter(100.0)}, {E0: Counter(500.0)}, {E0: Counter(50.0)}, {E0: Counter(80.0)}]
    # 400 before the restart, 50 counted from zero after it, then 30 more.
    assert counter_window_increases(history) == {E0: 480.0}


def test_window_of_one_engine_restarting_while_the_other_keeps_counting_sums_per_series_increases() -> None:
    history = [
        {E0: Counter(1000.0, 1.0), E1: Counter(500.0, 1.0)},
        {E0: Counter(40.0, 7.0), E1: Counter(700.0, 1.0)},
        {E0: Counter(90.0, 7.0), E1: Counter(900.0, 1.0)},
    ]
    increases = counter_window_increases(history)
    assert increases == {E0: 90.0, E1: 400.0}
    # Summing the raw values first would have seen 1500 → 990: a "reset" of the whole model.
    assert sum(increases.values()) == 490.0


def test_series_that_appears_mid_window_is_counted_from_zero() -> None:
    history = [{E0: Counter(10.0)}, {E0: Counter(20.0), E1: Counter(7.0)}, {E0: Counter(30.0), E1: Counter(9.0)}]
    assert counter_window_increases(history) == {E0: 20.0, E1: 9.0}


def test_series_missing_from_one_snapshot_is_compared_with_its_last_value_seen() -> None:
    history = [{E0: Counter(10.0), E1: Counter(100.0)}, {E0: Counter(20.0)}, {E0: Counter(30.0), E1: Counter(150.0)}]
    assert counter_window_increases(history) == {E0: 20.0, E1: 50.0}


def test_window_of_one_snapshot_has_no_increase_and_one_compared_with_itself_is_zero() -> None:
    assert counter_window_increases([{E0: Counter(10.0)}]) == {}
    assert counter_window_increases([{E0: Counter(10.0)}, {E0: Counter(10.0)}]) == {E0: 0.0}


def _h(counts: list[float], created: float | None = None, bounds: tuple[float, ...] = (0.1, 1.0, INF)) -> Histogram:
    return Histogram(tuple(zip(bounds, counts, strict=True)), counts[-1], created)


def test_histogram_increase_is_taken_bucket_by_bucket() -> None:
    delta = histogram_increase(_h([1, 3, 4]), _h([2, 7, 10]))
    assert delta.buckets == ((0.1, 1), (1.0, 4), (INF, 6))
    assert delta.count == 6


def test_histogram_bucket_that_went_down_resets_the_whole_histogram() -> None:
    after = _h([1, 2, 3])
    assert histogram_increase(_h([2, 7, 10]), after).buckets == after.buckets


def test_histogram_with_a_new_created_time_is_a_reset() -> None:
    after = _h([5, 9, 12], created=9.0)
    assert histogram_increase(_h([2, 7, 10], created=1.0), after).buckets == after.buckets


def test_histogram_with_a_new_bucket_layout_counts_the_new_buckets() -> None:
    after = _h([5, 9, 12], bounds=(0.5, 2.0, INF))
    assert histogram_increase(_h([2, 7, 10]), after).buckets == after.buckets


def test_histogram_window_adds_up_bucket_increases_across_a_reset() -> None:
    history = [{TTFT: _h([1, 2, 2])}, {TTFT: _h([3, 6, 8])}, {TTFT: _h([1, 1, 2])}]
    (summed,) = histogram_window_increases(history).values()
    # (2, 4, 6) before the restart plus (1, 1, 2) after it.
    assert summed.buckets == ((0.1, 3), (1.0, 5), (INF, 8))
    assert summed.count == 8


def test_sum_histograms_adds_counts_per_upper_bound_across_engines() -> None:
    summed = sum_histograms([_h([1, 2, 3]), _h([0, 5, 5])])
    assert summed is not None
    assert summed.buckets == ((0.1, 1), (1.0, 7), (INF, 8))
    assert summed.count == 8
    assert sum_histograms([]) is None
