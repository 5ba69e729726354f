"""Increase of counters and histogram buckets between two snapshots, with resets handled.

Semantics follow PromQL's ``increase`` over two points: a value that went down means the counter restarted
from zero, so the increase is the new value. A changed ``_created`` timestamp is also a restart, even when the
new value happens to be larger (PromQL cannot see this; we can). A series absent before started at zero.
Histograms reset as a whole: if any bucket went down, or the bucket layout changed, the new buckets are the
increase. Over a window of many snapshots the increases between neighbours are added up, so every reset inside
the window is seen, not only one between its ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sidecar.core.snapshot import Counter, CounterKey, Histogram, HistogramKey


def counter_increase(before: Counter | None, after: Counter) -> float:
    if before is None or _restarted(before.created, after.created) or after.value < before.value:
        return after.value
    return after.value - before.value


def histogram_increase(before: Histogram | None, after: Histogram) -> Histogram:
    if before is None or _restarted(before.created, after.created):
        return after
    if [b for b, _ in before.buckets] != [b for b, _ in after.buckets]:
        return after
    deltas = tuple((bound, a - b) for (bound, a), (_, b) in zip(after.buckets, before.buckets, strict=True))
    if any(d < 0 for _, d in deltas) or after.count < before.count:
        return after
    return Histogram(deltas, after.count - before.count, after.created)


def counter_increases(
    before: Mapping[CounterKey, Counter], after: Mapping[CounterKey, Counter]
) -> dict[CounterKey, float]:
    return {key: counter_increase(before.get(key), value) for key, value in after.items()}


def histogram_increases(
    before: Mapping[HistogramKey, Histogram], after: Mapping[HistogramKey, Histogram]
) -> dict[HistogramKey, Histogram]:
    return {key: histogram_increase(before.get(key), value) for key, value in after.items()}


def counter_window_increases(history: Sequence[Mapping[CounterKey, Counter]]) -> dict[CounterKey, float]:
    """Per series, the increases between consecutive snapshots added up, as PromQL's ``increase`` adds up
    every reset inside its range. ``history[0]`` is the baseline; a series first seen later started at zero,
    and one missing from a snapshot (a failed scrape of one engine) is compared with its last value seen.
    """
    if not history:
        return {}
    last: dict[CounterKey, Counter] = dict(history[0])
    totals: dict[CounterKey, float] = {}
    for snapshot in history[1:]:
        for key, counter in snapshot.items():
            totals[key] = totals.get(key, 0.0) + counter_increase(last.get(key), counter)
            last[key] = counter
    return totals


def histogram_window_increases(history: Sequence[Mapping[HistogramKey, Histogram]]) -> dict[HistogramKey, Histogram]:
    """The same for histograms: bucket increases between consecutive snapshots, added up per bound."""
    if not history:
        return {}
    last: dict[HistogramKey, Histogram] = dict(history[0])
    parts: dict[HistogramKey, list[Histogram]] = {}
    for snapshot in history[1:]:
        for key, histogram in snapshot.items():
            parts.setdefault(key, []).append(histogram_increase(last.get(key), histogram))
            last[key] = histogram
    return {key: summed for key, hs in parts.items() if (summed := sum_histograms(hs)) is not None}


def sum_histograms(histograms: list[Histogram]) -> Histogram | None:
    """``sum by (le)``: bucket counts added per upper bound across engines."""
    if not histograms:
        return None
    totals: dict[float, float] = {}
    for h in histograms:
        for bound, count in h.buckets:
            totals[bound] = totals.get(bound, 0.0) + count
    return Histogram(tuple(sorted(totals.items())), sum(h.count for h in histograms))


def _restarted(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and before != after
