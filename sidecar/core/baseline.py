"""The P99/P50 latency ratio without speculation, and how far the current ratio diverges from it.

Speculation's signature failure is P50 improving while P99 regresses, so the ratio P99/P50 is compared with
what it was without speculation: configured by the operator, or learned from windows observed while
speculation was off. Learned values are the median of recent non-overlapping windows (one noisy window
cannot move it far).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from statistics import median

from sidecar.core.stats import Stats

MAX_LEARNED = 30
# A latency window needs this many requests before its P99/P50 may become a baseline.
MIN_BASELINE_OBSERVATIONS = 50.0


@dataclass(frozen=True)
class Baseline:
    configured: Mapping[str, float] = field(default_factory=dict)
    # model -> metric -> recent ratios, oldest first
    learned: Mapping[str, Mapping[str, tuple[float, ...]]] = field(default_factory=dict)
    last_learned_at: float | None = None

    def ratio(self, model: str, metric: str) -> float | None:
        if metric in self.configured:
            return self.configured[metric]
        values = self.learned.get(model, {}).get(metric, ())
        return median(values) if values else None


def learn(baseline: Baseline, stats: Stats, now: float, every: float, min_observations: float) -> Baseline:
    """Add this window's ratios for models running without speculation, once per ``every`` seconds."""
    if baseline.last_learned_at is not None and now - baseline.last_learned_at < every:
        return baseline
    learned = {m: dict(metrics) for m, metrics in baseline.learned.items()}
    changed = False
    for model in stats.models:
        if model.speculation:
            continue
        for metric, ratio in model.p99_p50_ratio.items():
            if ratio is None or model.latency_observations.get(metric, 0.0) < min_observations:
                continue
            history = learned.setdefault(model.model_name, {}).get(metric, ())
            learned[model.model_name][metric] = (*history, ratio)[-MAX_LEARNED:]
            changed = True
    if not changed:
        return baseline
    return replace(baseline, learned=learned, last_learned_at=now)


def divergence(current: float | None, baseline: float | None) -> float | None:
    """Current P99/P50 over the baseline's: 1.0 is 'as without speculation', 2.0 is twice the tail spread."""
    if current is None or baseline is None or baseline <= 0:
        return None
    return current / baseline
