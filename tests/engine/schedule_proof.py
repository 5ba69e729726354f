"""Drafts per load on a real engine, from the engine's own counters: does a K-per-batch-size schedule hold?

vLLM's speculative-config key `num_speculative_tokens_per_batch_size` (docs/engines.md, "K per batch size")
picks K per scheduler step from the number of requests scheduled in that step. Its effect shows in the engine's
counters: `vllm:spec_decode_num_drafts_total` (request-steps that carried drafts) and
`vllm:spec_decode_num_draft_tokens_total`, against `vllm:generation_tokens_total`. `drafts_at` drives one level
of concurrency and returns the deltas of those counters over it.

Used by tests/e2e/test_schedule_engine.py and benchmarks/schedule_bands.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tests.engine.server import Engine
from tests.engine.workload import fetch_metrics, run_workload

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
GENERATED = "vllm:generation_tokens_total"
COUNTERS = (DRAFTS, DRAFT_TOKENS, ACCEPTED, GENERATED)


def counters(url: str) -> dict[str, float]:
    """The engine's totals of COUNTERS (0 for a series it does not expose: no speculation)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(fetch_metrics(url)):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


@dataclass(frozen=True)
class DraftDelta:
    """What the engine counted over one level of load."""

    concurrency: int
    requests: int
    drafts: int  # request-steps that carried draft tokens
    draft_tokens: int
    accepted_tokens: int
    generated_tokens: int

    @property
    def draft_tokens_per_token(self) -> float:
        return self.draft_tokens / self.generated_tokens if self.generated_tokens else 0.0

    def line(self) -> str:
        return (
            f"concurrency {self.concurrency}: {self.requests} requests, {self.generated_tokens} tokens generated, "
            f"{self.drafts} drafts, {self.draft_tokens} draft tokens, {self.accepted_tokens} accepted"
        )


def drafts_at(engine: Engine, concurrency: int, requests: int, max_tokens: int = 24) -> DraftDelta:
    """`requests` requests at temperature 0, `concurrency` at a time, and the engine's counter deltas over them."""
    before = counters(engine.url)
    results = run_workload(engine, requests, 0.0, max_tokens=max_tokens, concurrency=concurrency)
    bad = [r for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} request(s) failed, the first: HTTP {bad[0].status} {bad[0].raw[:300]!r}")
    after = counters(engine.url)
    delta = {name: round(after[name] - before[name]) for name in COUNTERS}
    return DraftDelta(
        concurrency, requests, delta[DRAFTS], delta[DRAFT_TOKENS], delta[ACCEPTED], delta[GENERATED]
    )
