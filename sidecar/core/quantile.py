"""PromQL ``histogram_quantile`` over classic buckets, with its exact edge cases.

Mirrors Prometheus' bucketQuantile (2.42, the version the tests run through promtool): NaN without a +Inf
bucket, with fewer than two buckets or no observations; buckets with the same bound merged; non-monotonic
counts forced monotonic; the +Inf bucket answers with the highest finite bound; a first bucket with a bound
<= 0 answers with that bound; otherwise linear interpolation inside the bucket, starting from 0 for the first.
NaN is returned as None: a quantile that cannot be computed is absent, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    value = promql_histogram_quantile(q, buckets)
    return None if math.isnan(value) else value


def promql_histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' bucketQuantile step by step, NaN counts included (Go's comparisons with NaN are all false)."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not buckets:
        return math.nan
    ordered = sorted(buckets, key=lambda b: b[0])
    if ordered[-1][0] != math.inf:
        return math.nan
    merged = _coalesce(ordered)
    counts = _monotonic([c for _, c in merged])
    if len(merged) < 2:
        return math.nan
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    # Only the finite buckets are searched, as sort.Search(len(buckets)-1, ...) does.
    b = _go_search(len(counts) - 1, lambda i: counts[i] >= rank)
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
    """ensureMonotonic: a count below the highest so far is raised to it.

    As in Prometheus, the running highest starts at the first count and only moves up on a strictly larger
    count; every comparison with NaN is false, so a NaN first count freezes it and a NaN later is kept as is.
    """
    out = counts[:1]
    highest = counts[0] if counts else math.nan
    for c in counts[1:]:
        if c > highest:
            highest = c
            out.append(c)
        else:
            out.append(highest if c < highest else c)
    return out


def _go_search(n: int, holds: Callable[[int], bool]) -> int:
    """sort.Search: the smallest i in [0, n) for which ``holds`` is true (n if none), by the same bisection."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _go_divide(a: float, b: float) -> float:
    """IEEE division as Go does it: x/0 is ±Inf and 0/0 is NaN (Python would raise)."""
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def histogram_mean(buckets: Sequence[tuple[float, float]]) -> float | None:
    """The mean of the observations, as ``histogram_quantile`` sees them: spread evenly within each bucket.

    Each bucket counts at its midpoint (the first from 0); what lies in ``+Inf`` counts at the highest finite
    bound, as a quantile there would. None without a ``+Inf`` bucket, with fewer than two buckets, or with no
    observations. Used where a histogram's ``_sum`` is not at hand (the window keeps buckets only).
    """
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        return None
    total = buckets[-1][1]
    if not total > 0:
        return None
    weighted, below, lower = 0.0, 0.0, 0.0
    for bound, cumulative in sorted(buckets):
        count = max(cumulative - below, 0.0)
        if bound == math.inf:
            value = lower  # the highest finite bound
        elif bound <= lower:
            value = bound  # a first bucket at or below 0, as histogram_quantile answers it
        else:
            value = (lower + bound) / 2
        weighted += count * value
        below = max(below, cumulative)
        lower = bound if bound != math.inf else lower
    return weighted / total
