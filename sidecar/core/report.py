"""The report's JSON shape (``report --json``, ``/api/report``, ``/api/fleet``) and the tap's per-bucket summary.

The shape is a contract (README.md, "A short tour"): one object per model_name, every key always present, and a
value that cannot be computed is null, never 0 (and never NaN, which is not JSON). Pure: Stats and summaries in,
dicts out; the tables people read are drawn by :mod:`sidecar.cli.report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.advice import Advice, advice_json
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.load_schedule import SchedulePlan, schedule_json
from sidecar.core.measured_speedup import MeasuredSpeedup, band_label
from sidecar.core.right_size_k import for_model, right_size_json
from sidecar.core.speedup_words import caveat
from sidecar.core.stats import ModelStats, Stats


@dataclass(frozen=True)
class BucketSummary:
    """One (model, temperature bucket) row for `report` and /status. None means unknown, never 0."""

    model_name: str
    bucket: str
    requests: int  # since start
    draft_tokens: int  # since start
    accepted_tokens: int  # since start
    window_requests: int  # in the gauge window, any source
    window_draft_tokens: int
    window_accepted_tokens: int
    acceptance: float | None  # token-weighted over the window
    p10: float | None  # per-request acceptance quantiles over the window
    p50: float | None
    p90: float | None
    sources: dict[str, int]  # requests since start by source


def report_body(
    stats: Stats | None,
    advice: Iterable[Advice] | None,
    buckets: Iterable[BucketSummary],
    measured: Mapping[str, MeasuredSpeedup | None] | None = None,
    threshold: float = 0.5,
    *,
    schedules: Mapping[str, SchedulePlan | None] | None = None,
) -> dict[str, Any]:
    """``report --json`` and ``/api/report``: the window's report (empty without a window), the advice on it
    (no key when there is none to give) and the tap's buckets. ``measured``: the speedup measured per model by a
    running sidecar (a report of scrapes has none); ``schedules``: the load schedule it proposes per model."""
    body = (
        report_json(stats, measured, threshold, schedules=schedules)
        if stats is not None
        else {"engine": None, "window_seconds": None, "models": []}  # the same keys, for scripts, before a window
    )
    if advice is not None:
        body["advice"] = [advice_json(a) for a in advice]
    body["buckets"] = [bucket_json(b) for b in buckets]
    return body


def report_json(
    stats: Stats,
    measured: Mapping[str, MeasuredSpeedup | None] | None = None,
    threshold: float = 0.5,
    *,
    schedules: Mapping[str, SchedulePlan | None] | None = None,
) -> dict[str, Any]:
    """``measured``: the speedup measured per model by a running sidecar (a report of scrapes has none), and
    ``schedules`` the load schedule proposed from its windows."""
    return {
        "engine": stats.engine,
        "window_seconds": _finite(stats.window_seconds),
        "models": [
            _model_json(m, (measured or {}).get(m.model_name), threshold, (schedules or {}).get(m.model_name))
            for m in stats.models
        ],
    }


def measured_json(m: MeasuredSpeedup | None) -> dict[str, Any] | None:
    """The measured speedup as JSON (null before any load band holds windows of both states)."""
    if m is None:
        return None
    return {
        "speedup": _finite(m.speedup),
        "low": _finite(m.low),
        "high": _finite(m.high),
        # "slower" / "faster" with speculation (the whole interval on one side of 1) or "unclear".
        "finding": m.finding,
        "on_windows": m.on_windows,
        "off_windows": m.off_windows,
        "load_bands": [band_label(b.band) for b in m.bands],
        "effective_draft_cost_ratio": _finite(m.draft_cost),
        "breakeven_acceptance_ratio": _finite(m.breakeven_acceptance),
        "breakeven_acceptance_interval": [_finite(m.breakeven_low), _finite(m.breakeven_high)],
        "e2e_p50_ratio": _finite(m.e2e_p50_ratio),
        "e2e_p99_ratio": _finite(m.e2e_p99_ratio),
        "in_force": m.established,
        "in_force_threshold": _finite(m.policy_threshold),
        "evidence_needed": m.evidence_needed or None,
    }


def threshold_in_force(measured: MeasuredSpeedup | None, threshold: float) -> float:
    """The acceptance the policy judges against: the measured break-even once established, else ``threshold``."""
    in_force = measured.policy_threshold if measured is not None else None
    return in_force if in_force is not None else threshold


def _model_json(
    m: ModelStats, measured: MeasuredSpeedup | None = None, threshold: float = 0.5, schedule: SchedulePlan | None = None
) -> dict[str, Any]:
    ratios = m.p99_p50_ratio
    note = caveat(
        m.expected_speedup, m.acceptance_ratio, threshold_in_force(measured, threshold), m.draft_cost, measured
    )
    return {
        "model_name": m.model_name,
        "speculation": "on" if m.speculation else "off",
        "window": {
            "drafts": _finite(m.drafts),
            "draft_tokens": _finite(m.draft_tokens),
            "accepted_tokens": _finite(m.accepted_tokens),
        },
        "acceptance_ratio": _finite(m.acceptance_ratio),
        "mean_acceptance_length": _finite(m.mean_acceptance_length),
        "alpha_estimate": _finite(m.alpha_estimate),
        "num_speculative_tokens": m.num_speculative_tokens,
        "position_acceptance": [_finite(v) for v in m.position_acceptance],
        "breakeven_acceptance_length": _finite(m.breakeven_acceptance_length),
        "expected_speedup": _finite(m.expected_speedup),
        # Where the c behind the two numbers above comes from: configured, assumed (and why) or unknown.
        "draft_cost": {"ratio": m.draft_cost.ratio, "source": str(m.draft_cost.source), "basis": m.draft_cost.basis},
        # Why a modelled speedup above 1 sits beside an acceptance below the threshold (null when it does not).
        "expected_speedup_note": note,
        "measured_speedup": measured_json(measured),
        # The K (1..k) with the highest expected speedup, its plausible range and c's source (null when unknown).
        "right_size_k": right_size_json(for_model(m, measured)),
        # Where speculation stops paying as the load grows, per load band, and the schedule of K that follows
        # (sidecar.core.load_schedule); null from a report of scrapes (no windows over time) or speculation off.
        "load_schedule": schedule_json(schedule),
        "latency_seconds": {
            metric: {k: _finite(v) for k, v in q.as_dict().items()}
            if (q := m.latency.get(metric))
            else {"p50": None, "p90": None, "p95": None, "p99": None}
            for metric in LATENCY_METRICS
        },
        "p99_p50_ratio": {metric: _finite(ratios.get(metric)) for metric in LATENCY_METRICS},
        "kv_cache_usage": _finite(m.kv_cache_usage),
        "generation_tokens_per_second": _finite(m.generation_tokens_per_second),
        "comparable_with_v1": m.comparable,
        "verdict": m.verdict.value,
        # Only for verdict "invalid": why no number of this window can be trusted (null otherwise).
        "invalid": {"reason": m.invalid, "detail": m.invalid_detail} if m.invalid is not None else None,
    }


def bucket_json(b: BucketSummary) -> dict[str, Any]:
    """One temperature bucket as the tap saw it (window values; totals since the sidecar started)."""
    return {
        "model_name": b.model_name,
        "temperature_bucket": b.bucket,
        "window_requests": b.window_requests,
        "window_draft_tokens": b.window_draft_tokens,
        "window_accepted_tokens": b.window_accepted_tokens,
        "acceptance_ratio": _finite(b.acceptance),
        "p10": _finite(b.p10),
        "p50": _finite(b.p50),
        "p90": _finite(b.p90),
        "requests_total": b.requests,
        "draft_tokens_total": b.draft_tokens,
        "accepted_tokens_total": b.accepted_tokens,
        "sources": dict(b.sources),
    }


def bucket_from_json(row: dict[str, Any]) -> BucketSummary:
    """The inverse of bucket_json: a sidecar's /api/report row back into a summary (for `report --tap`)."""
    return BucketSummary(
        model_name=str(row["model_name"]),
        bucket=str(row["temperature_bucket"]),
        requests=int(row["requests_total"]),
        draft_tokens=int(row["draft_tokens_total"]),
        accepted_tokens=int(row["accepted_tokens_total"]),
        window_requests=int(row["window_requests"]),
        window_draft_tokens=int(row["window_draft_tokens"]),
        window_accepted_tokens=int(row["window_accepted_tokens"]),
        acceptance=row["acceptance_ratio"],
        p10=row["p10"],
        p50=row["p50"],
        p90=row["p90"],
        sources={str(k): int(v) for k, v in row["sources"].items()},
    )


def _finite(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value
