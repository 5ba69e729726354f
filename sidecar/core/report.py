"""The report's JSON shape (``report --json``, ``/api/report``, ``/api/fleet``) and the tap's per-bucket summary.

The shape is a contract (README.md, "A short tour"): one object per model_name, every key always present, and a
value that cannot be computed is null, never 0 (and never NaN, which is not JSON). Pure: Stats and summaries in,
dicts out; the tables people read are drawn by :mod:`sidecar.cli.report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.core.advice import Advice, advice_json
from sidecar.core.catalog import LATENCY_METRICS
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
    stats: Stats | None, advice: Iterable[Advice] | None, buckets: Iterable[BucketSummary]
) -> dict[str, Any]:
    """``report --json`` and ``/api/report``: the window's report (empty without a window), the advice on it
    (no key when there is none to give) and the tap's buckets."""
    body = report_json(stats) if stats is not None else {"engine": None, "models": []}
    if advice is not None:
        body["advice"] = [advice_json(a) for a in advice]
    body["buckets"] = [bucket_json(b) for b in buckets]
    return body


def report_json(stats: Stats) -> dict[str, Any]:
    return {
        "engine": stats.engine,
        "window_seconds": _finite(stats.window_seconds),
        "models": [_model_json(m) for m in stats.models],
    }


def _model_json(m: ModelStats) -> dict[str, Any]:
    ratios = m.p99_p50_ratio
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
