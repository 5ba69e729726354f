"""Numbers no engine can produce: the window that holds one is ``invalid``, never a verdict or a decision.

What a real engine guarantees (docs/engines.md; vLLM's ``SpecDecodingProm.observe``, llama.cpp's counters alike):
every counter is finite and >= 0; one engine step adds its drafts, then its draft tokens, then its accepted
tokens, then its accepted tokens per position, and a step accepts at most the tokens it drafted and at most one
token per position per draft. So at every instant, per engine series: drafts <= draft tokens, accepted <= draft
tokens and accepted at any position <= drafts. vLLM renders /metrics in the event loop that records the
steps, so a scrape never sees half a step (in multiprocess mode, several API servers, one could: that window is
invalid once, which costs a window of no data and never an action; taking it as data could cost a toggle).
A classic histogram's buckets are cumulative (never lower at a higher bound) and its ``_count`` equals its
``+Inf`` bucket (prometheus_client computes both from one read).

A counter reset is not a bad value: an engine restart (vLLM restarts on every toggle) brings every counter of
its series back to 0 together, and ``sidecar.core.window`` counts the series from zero. What is told apart
there: a series whose ``_created`` changed restarted; a counter that went down while ``_created`` stayed the
same did not, and is bad. Without ``_created`` (multiprocess mode), counters that went down while none of the
same series went up are a restart; some down and others up is bad.

Everything here is pure and returns the first problem found (a reason label and a sentence), or None.
``slack`` is the relative excess tolerated in the orderings above: 0 for numbers scraped from an engine, a
little for increases Prometheus computed (it extrapolates each series on its own; see ``sidecar.control.fleet``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sidecar.core.catalog import Role
from sidecar.core.snapshot import Counter, CounterKey, Histogram, ModelSnapshot, SeriesId


class Invalid(StrEnum):
    """Why a window is invalid (a Prometheus label value: keep the set small and fixed)."""

    NOT_FINITE = "not_finite"  # NaN or ±Inf where a count must be
    NEGATIVE = "negative"
    ACCEPTED_EXCEEDS_DRAFTED = "accepted_exceeds_drafted"  # accepted > draft tokens
    DRAFTS_EXCEED_DRAFT_TOKENS = "drafts_exceed_draft_tokens"  # a draft carries >= 1 token
    POSITION_EXCEEDS_DRAFTS = "position_exceeds_drafts"  # accepted at one position > drafts
    COUNTER_DECREASED = "counter_decreased"  # went down without a restart
    HISTOGRAM_NOT_MONOTONIC = "histogram_not_monotonic"  # a cumulative bucket below the one before
    HISTOGRAM_COUNT_MISMATCH = "histogram_count_mismatch"  # _count != the +Inf bucket
    GAUGE_OUT_OF_RANGE = "gauge_out_of_range"  # an acceptance rate outside 0-1, a length below 0 or infinite


INVALID_REASONS = tuple(str(r) for r in Invalid)


@dataclass(frozen=True)
class Problem:
    reason: Invalid
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


# --- one snapshot ----------------------------------------------------------------------------------------


def snapshot_problem(model: ModelSnapshot, slack: float = 0.0) -> Problem | None:
    """The first value in one model's snapshot that no engine can write."""
    return (
        _counter_values(model.counters)
        or _orderings(model.counters, slack)
        or _histograms(model, slack)
        or _gauges(model.gauges)
    )


def _counter_values(counters: Mapping[CounterKey, Counter]) -> Problem | None:
    for (role, series, position), counter in counters.items():
        value = counter.value
        if not 0.0 <= value < math.inf:  # also false for NaN
            reason = Invalid.NEGATIVE if value < 0 and value > -math.inf else Invalid.NOT_FINITE
            return Problem(reason, f"{_name(role, series, position)} is {value:g}")
    return None


def _orderings(counters: Mapping[CounterKey, Counter], slack: float) -> Problem | None:
    by_series: dict[SeriesId, dict[tuple[Role, str], float]] = defaultdict(dict)
    for (role, series, position), counter in counters.items():
        by_series[series][(role, position)] = counter.value
    for series, values in by_series.items():
        positions = [v for (role, _), v in values.items() if role is Role.ACCEPTED_PER_POS]
        problem = totals_problem(
            values.get((Role.DRAFTS, "")),
            values.get((Role.DRAFT_TOKENS, "")),
            values.get((Role.ACCEPTED_TOKENS, "")),
            positions,
            slack,
            where=_where(series),
        )
        if problem is not None:
            return problem
    return None


def totals_problem(
    drafts: float | None,
    draft_tokens: float | None,
    accepted: float | None,
    positions: Sequence[float],
    slack: float = 0.0,
    *,
    where: str = "",
) -> Problem | None:
    """The orderings every step keeps, on cumulative values or on a window's increases alike."""
    suffix = f" ({where})" if where else ""
    if accepted is not None and draft_tokens is not None and _exceeds(accepted, draft_tokens, slack):
        return Problem(
            Invalid.ACCEPTED_EXCEEDS_DRAFTED, f"accepted tokens {accepted:g} > draft tokens {draft_tokens:g}{suffix}"
        )
    if drafts is not None and draft_tokens is not None and _exceeds(drafts, draft_tokens, slack):
        return Problem(Invalid.DRAFTS_EXCEED_DRAFT_TOKENS, f"drafts {drafts:g} > draft tokens {draft_tokens:g}{suffix}")
    if drafts is not None:
        for at in positions:
            if _exceeds(at, drafts, slack):
                return Problem(
                    Invalid.POSITION_EXCEEDS_DRAFTS, f"accepted at a position {at:g} > drafts {drafts:g}{suffix}"
                )
    return None


def _exceeds(part: float, whole: float, slack: float) -> bool:
    return part > whole * (1.0 + slack)


def _histograms(model: ModelSnapshot, slack: float) -> Problem | None:
    for (metric, series), h in model.histograms.items():
        problem = histogram_problem(h, slack, where=f"{metric}{_brace(series)}")
        if problem is not None:
            return problem
    return None


def histogram_problem(h: Histogram, slack: float = 0.0, *, where: str = "") -> Problem | None:
    previous = 0.0
    for bound, count in h.buckets:
        if not math.isfinite(count):
            return Problem(Invalid.NOT_FINITE, f"{where} bucket le={bound:g} is {count}")
        if count < 0:
            return Problem(Invalid.NEGATIVE, f"{where} bucket le={bound:g} is {count:g}")
        if previous > count * (1.0 + slack):
            return Problem(
                Invalid.HISTOGRAM_NOT_MONOTONIC, f"{where} bucket le={bound:g} is {count:g} < {previous:g} below it"
            )
        previous = max(previous, count)
    reported = h.count_sample
    if reported is not None:
        if not math.isfinite(reported) or reported < 0:
            reason = Invalid.NOT_FINITE if not math.isfinite(reported) else Invalid.NEGATIVE
            return Problem(reason, f"{where} _count is {reported:g}")
        inf = h.buckets[-1][1] if h.buckets and h.buckets[-1][0] == math.inf else None
        if inf is not None and abs(reported - inf) > slack * max(reported, inf):
            return Problem(Invalid.HISTOGRAM_COUNT_MISMATCH, f"{where} _count {reported:g} != +Inf bucket {inf:g}")
    return None


def _gauges(gauges: Mapping[Role, tuple[float, ...]]) -> Problem | None:
    # NaN is left out where gauges are averaged (an engine may divide 0 by 0 in an idle interval); ±Inf is not.
    for value in gauges.get(Role.ACCEPT_RATE_GAUGE, ()):
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            return Problem(Invalid.GAUGE_OUT_OF_RANGE, f"acceptance rate gauge is {value:g}")
    for value in gauges.get(Role.ACCEPT_LENGTH_GAUGE, ()):
        if not math.isnan(value) and not 0.0 <= value < math.inf:
            return Problem(Invalid.GAUGE_OUT_OF_RANGE, f"acceptance length gauge is {value:g}")
    return None


# --- naming, for the sentences -----------------------------------------------------------------------------


def _name(role: Role, series: SeriesId, position: str) -> str:
    labels = (*series, ("position", position)) if position else series
    return f"{role}{_brace(labels)}"


def _brace(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f"{k}={v!r}" for k, v in labels)
    return "{" + inner + "}" if inner else ""


def _where(series: SeriesId) -> str:
    return ",".join(f"{k}={v}" for k, v in series)
