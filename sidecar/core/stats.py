"""Snapshots of a window → the numbers people decide with, per model.

The window runs from the first snapshot to the last (one snapshot: since engine start). Counters and buckets
are increases over the window, per engine series, then summed per model. Gauges an engine averages itself
(SGLang, V0) are averaged over every snapshot of the window. A window that holds a number no engine can produce
(sidecar.core.validity) gives no numbers at all: verdict ``invalid``, with the reason.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean

from sidecar.core import acceptance, cost_prior, validity
from sidecar.core.catalog import LATENCY_METRICS, Role
from sidecar.core.cost_prior import DraftCost
from sidecar.core.quantile import histogram_mean, histogram_quantile
from sidecar.core.snapshot import Histogram, ModelSnapshot, Snapshot
from sidecar.core.verdict import Thresholds, Verdict, verdict
from sidecar.core.window import CounterWindow, counter_window, histogram_window_increases, sum_histograms

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class AnalysisConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    # c in L > 1 + k·c: ~0 for ngram/suffix, small for EAGLE/MTP heads, ~draft/target size for a draft model.
    # Set (--draft-cost-ratio): configured. None: draft_cost_prior, assumed from the speculative config, or unknown.
    draft_cost_ratio: float | None = None
    draft_cost_prior: DraftCost = cost_prior.UNKNOWN
    # How far (relative) accepted may exceed drafted, and the like, before the window is invalid: 0 for scraped
    # counters, which an engine keeps exactly; more for increases Prometheus extrapolated (sidecar.control.fleet).
    consistency_slack: float = 0.0

    @property
    def draft_cost(self) -> DraftCost:
        """The c the speedup model uses, with where it comes from (sidecar.core.cost_prior)."""
        if self.draft_cost_ratio is not None:
            return cost_prior.configured(self.draft_cost_ratio)
        return self.draft_cost_prior


@dataclass(frozen=True)
class Quantiles:
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"p50": self.p50, "p90": self.p90, "p95": self.p95, "p99": self.p99}

    @property
    def p99_p50_ratio(self) -> float | None:
        return acceptance.ratio(self.p99, self.p50)


@dataclass(frozen=True)
class ModelStats:
    model_name: str
    speculation: bool
    drafts: float | None
    draft_tokens: float | None
    accepted_tokens: float | None
    acceptance_ratio: float | None
    mean_acceptance_length: float | None
    alpha_estimate: float | None
    num_speculative_tokens: int | None
    position_acceptance: tuple[float, ...]
    breakeven_acceptance_length: float | None
    expected_speedup: float | None
    latency: Mapping[str, Quantiles]
    latency_observations: Mapping[str, float]
    kv_cache_usage: float | None
    generation_tokens: float | None
    generation_tokens_per_second: float | None
    verdict: Verdict
    comparable: bool = True
    # Set when the window holds numbers no engine can produce (sidecar.core.validity): the reason label and a
    # sentence. Every number above is then None (or empty) and the verdict is ``invalid``.
    invalid: str | None = None
    invalid_detail: str | None = None
    # The c behind breakeven_acceptance_length and expected_speedup: configured, assumed or unknown.
    draft_cost: DraftCost = cost_prior.UNKNOWN
    # Mean latency per metric over the window: _sum / count, or from the buckets without a _sum (histogram_mean).
    latency_mean: Mapping[str, float] = field(default_factory=dict)
    # Mean requests running over the window's scrapes (summed over engines): the load the latency was measured at.
    requests_running: float | None = None

    @property
    def p99_p50_ratio(self) -> dict[str, float | None]:
        return {metric: q.p99_p50_ratio for metric, q in self.latency.items()}


@dataclass(frozen=True)
class Stats:
    engine: str | None
    models: tuple[ModelStats, ...]
    window_seconds: float | None

    def model(self, name: str) -> ModelStats | None:
        return next((m for m in self.models if m.model_name == name), None)


def compute_stats(snapshots: Sequence[Snapshot], config: AnalysisConfig) -> Stats:
    if not snapshots:
        return Stats(None, (), None)
    last = snapshots[-1]
    seconds = _elapsed(snapshots[0], last) if len(snapshots) > 1 else None
    comparable = last.dialect.comparable if last.dialect else True
    models = []
    for name, after in last.models.items():
        per_snapshot = [s.models.get(name) for s in snapshots]
        # One snapshot: the window is everything since engine start, i.e. since an empty baseline.
        chain = per_snapshot if len(snapshots) > 1 else [None, after]
        history = [m for m in per_snapshot if m is not None]
        models.append(_model_stats(after, chain, history, seconds=seconds, config=config, comparable=comparable))
    return Stats(last.engine, tuple(models), seconds)


def _elapsed(first: Snapshot, last: Snapshot) -> float | None:
    if first.taken_at is None or last.taken_at is None:
        return None
    elapsed = last.taken_at - first.taken_at
    return elapsed if elapsed > 0 else None


def _model_stats(
    after: ModelSnapshot,
    chain: Sequence[ModelSnapshot | None],
    history: Sequence[ModelSnapshot],
    *,
    seconds: float | None,
    config: AnalysisConfig,
    comparable: bool,
) -> ModelStats:
    window = counter_window([m.counters if m else {} for m in chain])
    problem = _window_problem(chain, window, config.consistency_slack)
    if problem is not None:
        return _invalid(after, problem, comparable)
    increases = window.increases
    totals: dict[Role, float] = defaultdict(float)
    per_position: dict[int, float] = defaultdict(float)
    for (role, _series, position), value in increases.items():
        if role is Role.ACCEPTED_PER_POS:
            per_position[_position_index(position)] += value
        else:
            totals[role] += value
    drafts = totals.get(Role.DRAFTS)
    draft_tokens = totals.get(Role.DRAFT_TOKENS)
    accepted = totals.get(Role.ACCEPTED_TOKENS)
    positions = [per_position[i] for i in sorted(per_position) if i >= 0]
    k = len(positions) or None

    ratio = acceptance.ratio(accepted, draft_tokens)
    length = acceptance.mean_acceptance_length(accepted, drafts)
    gauge_ratio = _gauge_mean(history, Role.ACCEPT_RATE_GAUGE)
    gauge_length = _gauge_mean(history, Role.ACCEPT_LENGTH_GAUGE)
    ratio = ratio if ratio is not None else gauge_ratio
    length = length if length is not None else gauge_length
    position_rates = acceptance.position_acceptance(positions, drafts)
    generation = totals.get(Role.GENERATION_TOKENS)
    speculation = after.speculation
    evidence = draft_tokens if draft_tokens is not None else _gauge_evidence(gauge_ratio, generation)

    latency, observations, means = _latency(chain)
    cost = config.draft_cost
    kv = [v for v in after.gauges.get(Role.KV_CACHE_USAGE, ()) if math.isfinite(v)]
    return ModelStats(
        model_name=after.model_name,
        speculation=speculation,
        drafts=drafts,
        draft_tokens=draft_tokens,
        accepted_tokens=accepted,
        acceptance_ratio=ratio if speculation else None,
        mean_acceptance_length=length if speculation else None,
        alpha_estimate=position_rates[0] if position_rates else None,
        num_speculative_tokens=k,
        position_acceptance=position_rates,
        breakeven_acceptance_length=acceptance.breakeven_acceptance_length(k, cost.ratio),
        expected_speedup=acceptance.expected_speedup(length if speculation else None, k, cost.ratio),
        latency=latency,
        latency_observations=observations,
        kv_cache_usage=max(kv) if kv else None,
        generation_tokens=generation,
        generation_tokens_per_second=acceptance.ratio(generation, seconds),
        verdict=verdict(ratio, evidence, speculation, config.thresholds),
        comparable=comparable,
        draft_cost=cost,
        latency_mean=means,
        requests_running=_running(history),
    )


def _window_problem(
    chain: Sequence[ModelSnapshot | None], window: CounterWindow, slack: float
) -> validity.Problem | None:
    """The first impossible number in the window: in any snapshot, in how counters moved, or in the totals."""
    for snapshot in chain:
        if snapshot is not None and (problem := _snapshot_problem(snapshot, slack)) is not None:
            return problem
    if window.decreased is not None:
        return validity.Problem(validity.Invalid.COUNTER_DECREASED, window.decreased)
    totals: dict[Role, float] = defaultdict(float)
    positions: dict[str, float] = defaultdict(float)
    for (role, _series, position), value in window.increases.items():
        if role is Role.ACCEPTED_PER_POS:
            positions[position] += value
        else:
            totals[role] += value
    return validity.totals_problem(
        totals.get(Role.DRAFTS),
        totals.get(Role.DRAFT_TOKENS),
        totals.get(Role.ACCEPTED_TOKENS),
        list(positions.values()),
        slack,
        where="window increases",
    )


def _snapshot_problem(snapshot: ModelSnapshot, slack: float) -> validity.Problem | None:
    key = f"problem@{slack!r}"
    if key not in snapshot.memo:
        snapshot.memo[key] = validity.snapshot_problem(snapshot, slack)
    problem: validity.Problem | None = snapshot.memo[key]
    return problem


def _invalid(after: ModelSnapshot, problem: validity.Problem, comparable: bool) -> ModelStats:
    return ModelStats(
        model_name=after.model_name,
        speculation=after.speculation,
        drafts=None,
        draft_tokens=None,
        accepted_tokens=None,
        acceptance_ratio=None,
        mean_acceptance_length=None,
        alpha_estimate=None,
        num_speculative_tokens=None,
        position_acceptance=(),
        breakeven_acceptance_length=None,
        expected_speedup=None,
        latency={},
        latency_observations={},
        kv_cache_usage=None,
        generation_tokens=None,
        generation_tokens_per_second=None,
        verdict=Verdict.INVALID,
        comparable=comparable,
        invalid=str(problem.reason),
        invalid_detail=problem.detail,
    )


def _position_index(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return -1


def _gauge_mean(history: Sequence[ModelSnapshot], role: Role) -> float | None:
    # Only scrapes taken with speculation on: SGLang writes 0 while it is off, which is no acceptance at all.
    values = [v for snap in history if snap.speculation for v in snap.gauges.get(role, ()) if not math.isnan(v)]
    return fmean(values) if values else None


def _gauge_evidence(gauge_ratio: float | None, generation: float | None) -> float | None:
    # Gauge-only engines expose no draft-token counter; generated tokens are the closest evidence of volume.
    return generation if gauge_ratio is not None else None


def _running(history: Sequence[ModelSnapshot]) -> float | None:
    """Mean over the window's scrapes of the requests running, summed over the engine's series."""
    per_scrape = [
        sum(v for v in values if math.isfinite(v))
        for snap in history
        if (values := snap.gauges.get(Role.REQUESTS_RUNNING))
    ]
    return fmean(per_scrape) if per_scrape else None


def _latency(
    chain: Sequence[ModelSnapshot | None],
) -> tuple[dict[str, Quantiles], dict[str, float], dict[str, float]]:
    increases = histogram_window_increases([m.histograms if m else {} for m in chain])
    grouped: dict[str, list[Histogram]] = defaultdict(list)
    for (metric, _series), hist in increases.items():
        grouped[metric].append(hist)
    latency: dict[str, Quantiles] = {}
    observations: dict[str, float] = {}
    means: dict[str, float] = {}
    for metric in LATENCY_METRICS:
        summed = sum_histograms(grouped.get(metric, []))
        if summed is None:
            continue
        if summed.buckets and summed.buckets[-1][0] == math.inf:
            # Without a +Inf bucket the number of observations is unknown, not zero.
            observations[metric] = summed.count
        values = [histogram_quantile(q, summed.buckets) for q in QUANTILES]
        latency[metric] = Quantiles(*values)
        if (mean := _mean(summed)) is not None:
            means[metric] = mean
    return latency, observations, means


def _mean(histogram: Histogram) -> float | None:
    """The exact mean from ``_sum`` / count when the engine exposes ``_sum``, else the buckets' estimate: on a CPU
    vLLM's TPOT buckets (first bound 10 ms) put nearly every request in one bucket, and a 7 ms against an 11 ms
    TPOT both read as 5 ms from the buckets (the real-engine proof, docs/model-family.md)."""
    total, count = histogram.sum, histogram.count
    if total is not None and math.isfinite(total) and total >= 0 and count > 0:
        return total / count
    return histogram_mean(histogram.buckets)


# Who hears of each new window of Stats (the controller): called by the scrape loop, or by the fleet loop in
# fleet mode.
StatsListener = Callable[[Stats], Awaitable[None]]
