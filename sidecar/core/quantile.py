"""PromQL ``histogram_quantile`` over classic buckets, with its exact edge cases.

Mirrors Prometheus' bucketQuantile: NaN without a +Inf bucket, with fewer than two buckets or no
observations; buckets with the same bound merged; non-monotonic counts forced monotonic; the +Inf bucket
answers with the highest finite bound; a first bucket with a bound <= 0 answers with that bound; otherwise
linear interpolation inside the bucket, starting from 0 for the first one.
NaN is returned as None: a quantile that cannot be computed is absent, never 0.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    value = promql_histogram_quantile(q, buckets)
    return None if math.isnan(value) else value


def promql_histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not buckets:
        return math.nan
    merged = _coalesce(sorted(buckets, key=lambda b: b[0]))
    if not math.isinf(merged[-1][0]) or merged[-1][0] < 0:
        return math.nan
    counts = _monotonic([c for _, c in merged])
    if len(merged) < 2:
        return math.nan
    observations = counts[-1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    # Search only the finite buckets, as sort.Search(len(buckets)-1, ...) does.
    b = bisect_left(counts, rank, 0, len(counts) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], counts[b]
    if b > 0:
        start = merged[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * _go_divide(rank, count)


def _coalesce(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for bound, count in buckets:
        if out and out[-1][0] == bound:
            out[-1] = (bound, out[-1][1] + count)
        else:
            out.append((bound, count))
    return out


def _monotonic(counts: list[float]) -> list[float]:
    out: list[float] = []
    highest = -math.inf
    for c in counts:
        highest = max(highest, c)
        out.append(highest)
    return out


def _go_divide(a: float, b: float) -> float:
    """IEEE division as Go does it: x/0 is ±Inf and 0/0 is NaN (Python would raise)."""
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b
