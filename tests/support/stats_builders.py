"""Stats and ModelStats built by hand, for tests of what consumes them (the controller, advice, /status)."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.advice import (
    BucketInput,
)
from sidecar.core.stats import ModelStats, Quantiles, Stats
from sidecar.core.verdict import Verdict

T0 = 1_800_000_000.0


def stats(ratio: float, drafts: float = 250.0, speculation: bool = True) -> Stats:
    k = 4
    model = ModelStats(
        model_name="tiny",
        speculation=speculation,
        drafts=drafts,
        draft_tokens=drafts * k,
        accepted_tokens=ratio * drafts * k,
        acceptance_ratio=ratio if speculation else None,
        mean_acceptance_length=1 + ratio * k,
        alpha_estimate=None,
        num_speculative_tokens=k,
        position_acceptance=(),
        breakeven_acceptance_length=1.0,
        expected_speedup=None,
        latency={},
        latency_observations={},
        kv_cache_usage=None,
        generation_tokens=None,
        generation_tokens_per_second=None,
        verdict=Verdict.DISABLE if ratio < 0.5 else Verdict.KEEP,
    )
    return Stats("vllm", (model,), 60.0)


BASE = ModelStats(
    model_name="tiny",
    speculation=True,
    drafts=1000.0,
    draft_tokens=4000.0,
    accepted_tokens=3000.0,
    acceptance_ratio=0.75,
    mean_acceptance_length=4.0,
    alpha_estimate=0.9,
    num_speculative_tokens=4,
    position_acceptance=(0.9, 0.8, 0.7, 0.6),
    breakeven_acceptance_length=1.0,
    expected_speedup=4.0,
    latency={"tpot": Quantiles(0.020, 0.030, 0.035, 0.050), "ttft": Quantiles(0.1, 0.2, 0.3, 0.4)},
    latency_observations={"tpot": 100.0},
    kv_cache_usage=0.30,
    generation_tokens=5000.0,
    generation_tokens_per_second=50.0,
    verdict=Verdict.KEEP,
)


def model(**changes: object) -> ModelStats:
    return replace(BASE, **changes)  # type: ignore[arg-type]


def bucket(label: str, requests: int, acceptance: float, p10: float | None = None) -> BucketInput:
    draft = requests * 100
    return BucketInput(label, requests, draft, round(draft * acceptance), p10 if p10 is not None else acceptance)
