"""Increase of counters and histogram buckets between two snapshots, with resets handled.

Semantics follow PromQL's ``increase`` over two points: a value that went down means the counter restarted
from zero, so the increase is the new value. A changed ``_created`` timestamp is also a restart, even when the
new value happens to be larger (PromQL cannot see this; we can). A series absent before started at zero.
Histograms reset as a whole: if any bucket went down, or the bucket layout changed, the new buckets are the
increase. Over a window of many snapshots the increases between neighbours are added up, so every reset inside
the window is seen, not only one between its ends.

Counters restart per engine series, not one by one (an engine restart zeroes them all): see
:func:`series_restarted` for how a restart is told from a counter that went down without one (bad data, which
``sidecar.core.validity`` turns into an invalid window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sidecar.core.snapshot import Counter, CounterKey, Histogram, HistogramKey, ModelSnapshot, SeriesId, Snapshot


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
    added = after.sum - before.sum if after.sum is not None and before.sum is not None else None
    return Histogram(deltas, after.count - before.count, after.created, sum=added)


@dataclass(frozen=True)
class CounterWindow:
    increases: dict[CounterKey, float]
    resets: int = 0  # engine series that restarted inside the window (each restart once)
    decreased: str | None = None  # a counter that went down without its series restarting (bad data), said how


def counter_window_increases(history: Sequence[Mapping[CounterKey, Counter]]) -> dict[CounterKey, float]:
    return counter_window(history).increases


def counter_window(history: Sequence[Mapping[CounterKey, Counter]]) -> CounterWindow:
    """Per series, the increases between consecutive snapshots added up, as PromQL's ``increase`` adds up
    every reset inside its range. ``history[0]`` is the baseline; a series first seen later started at zero,
    and one missing from a snapshot (a failed scrape of one engine) is compared with its last value seen.

    Unlike PromQL, a restart is judged per engine series, not per counter: an engine restart zeroes all its
    counters at once (see :func:`series_restarted`), so when one of them shows it, all of them count afresh.
    """
    if not history:
        return CounterWindow({})
    last: dict[CounterKey, Counter] = dict(history[0])
    totals: dict[CounterKey, float] = {}
    resets = 0
    decreased: str | None = None
    for snapshot in history[1:]:
        for series, keys in _by_series(snapshot).items():
            pairs = [(last.get(key), snapshot[key]) for key in keys]
            restarted, bad = series_restarted(pairs)
            resets += restarted
            if bad and decreased is None:
                decreased = f"{_series_name(series)}: {bad}"
            for key, (before, after) in zip(keys, pairs, strict=True):
                # Not restarted: a plain difference (a counter that went down anyway was named in ``bad``, and
                # its window is invalid; its new value is taken, as PromQL would).
                if restarted or before is None or after.value < before.value:
                    increase = after.value
                else:
                    increase = after.value - before.value
                totals[key] = totals.get(key, 0.0) + increase
                last[key] = after
    return CounterWindow(totals, resets, decreased)


def series_restarted(pairs: Sequence[tuple[Counter | None, Counter]]) -> tuple[bool, str | None]:
    """Whether one engine series restarted between two snapshots, from its counters' (before, after) pairs,
    and, if what they show is no restart but a counter went down all the same, a sentence saying so.

    A ``_created`` that changed is a restart, whatever the values. With ``_created`` present and unchanged, a
    counter that went down is bad data (a restart would have changed it). Without ``_created`` (multiprocess
    mode), counters that went down while none that had counted (above 0) went up are a restart; some down and
    some of those up is bad data.
    """
    down: tuple[Counter, Counter] | None = None
    created_known = rose = False
    for before, after in pairs:  # one pass: this runs for every series of every scrape in the window
        if before is None:
            continue
        if before.created is not None and after.created is not None:
            if before.created != after.created:
                return True, None
            created_known = True
        if after.value < before.value:
            down = down or (before, after)
        elif after.value > before.value > 0:
            rose = True
    if down is None:
        return False, None
    said = f"a counter went from {down[0].value:g} to {down[1].value:g}"
    if created_known:
        return False, said + " with the same _created"
    # A counter that was 0 says nothing (after a restart it may have counted past 0 again); one that had
    # counted and went up did not restart, so the one that went down is wrong.
    if rose:
        return False, said + " while others of the same engine went up"
    return True, None


def _by_series(snapshot: Mapping[CounterKey, Counter]) -> dict[SeriesId, list[CounterKey]]:
    grouped: dict[SeriesId, list[CounterKey]] = {}
    for key in snapshot:
        grouped.setdefault(key[1], []).append(key)
    return grouped


def _series_name(series: SeriesId) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in series) + "}"


def histogram_series_restarted(before: Histogram | None, after: Histogram) -> bool:
    """The same question for one histogram: its ``_created`` changed, or a bucket or the count went down."""
    if before is None:
        return False
    if _restarted(before.created, after.created):
        return True
    if [b for b, _ in before.buckets] != [b for b, _ in after.buckets]:
        return True  # new bucket bounds: the engine came back with other --custom-histogram-buckets
    return after.count < before.count or any(
        a < b for (_, a), (_, b) in zip(after.buckets, before.buckets, strict=True)
    )


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
    sums = [h.sum for h in histograms]
    total = math.fsum(s for s in sums if s is not None) if all(s is not None for s in sums) else None
    return Histogram(tuple(sorted(totals.items())), sum(h.count for h in histograms), sum=total)


def _restarted(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and before != after


def restarted_series(before: ModelSnapshot, after: ModelSnapshot) -> set[SeriesId]:
    """The engine series of one model that restarted between two consecutive snapshots (counters or histograms)."""
    restarted: set[SeriesId] = set()
    for series, keys in _by_series(after.counters).items():
        if series_restarted([(before.counters.get(key), after.counters[key]) for key in keys])[0]:
            restarted.add(series)
    for (metric, series), histogram in after.histograms.items():
        if histogram_series_restarted(before.histograms.get((metric, series)), histogram):
            restarted.add(series)
    return restarted


def count_resets(before: Snapshot, after: Snapshot) -> int:
    """Engine series (per model) that restarted between two consecutive scrapes; each restart counted once."""
    return sum(
        len(restarted_series(previous, model))
        for name, model in after.models.items()
        if (previous := before.models.get(name)) is not None
    )
