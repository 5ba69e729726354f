"""Increase of counters and histogram buckets between two snapshots, with resets handled.

Semantics follow PromQL's ``increase`` over two points: a value that went down means the counter restarted
from zero, so the increase is the new value. A changed ``_created`` timestamp is also a restart, even when the
new value happens to be larger (PromQL cannot see this; we can). A series absent before started at zero.
Histograms reset as a whole: if any bucket went down, or the bucket layout changed, the new buckets are the
increase.
"""

from __future__ import annotations

from collections.abc import Mapping

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
