"""Samples → Snapshot: dialect detection, per-engine series, _created pairing, buckets, duplicates."""

from __future__ import annotations

from sidecar.core.catalog import Role, openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.snapshot import Snapshot, build_snapshot

WANTED = wanted_sample_names()
PARSER = SampleParser(WANTED, openmetrics_aliases(WANTED))
INF = float("inf")


def snap(text: str) -> Snapshot:
    parsed = PARSER.parse(text)
    assert parsed.bad_lines == 0, parsed.bad_examples
    return build_snapshot(parsed.samples, 1.0)


V1 = """\
vllm:num_requests_running{engine="0",model_name="m"} 1
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 40
vllm:spec_decode_num_draft_tokens_created{engine="0",model_name="m"} 1700000000
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 10
vllm:spec_decode_num_draft_tokens_created{engine="1",model_name="m"} 1700000500
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 3
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 7
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 9
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="m"} 4
vllm:time_to_first_token_seconds_created{engine="0",model_name="m"} 1700000000
"""


def test_v1_counters_are_kept_per_engine_with_their_created_time() -> None:
    s = snap(V1)
    assert s.engine == "vllm"
    m = s.models["m"]
    e0 = m.counters[(Role.DRAFT_TOKENS, (("engine", "0"),), "")]
    e1 = m.counters[(Role.DRAFT_TOKENS, (("engine", "1"),), "")]
    assert (e0.value, e0.created) == (40, 1_700_000_000)
    assert (e1.value, e1.created) == (10, 1_700_000_500)


def test_created_samples_never_become_counter_values() -> None:
    values = {c.value for c in snap(V1).models["m"].counters.values()}
    assert 1_700_000_000 not in values


def test_per_position_counters_are_keyed_by_position() -> None:
    m = snap(V1).models["m"]
    assert m.counters[(Role.ACCEPTED_PER_POS, (("engine", "0"),), "0")].value == 7
    assert m.counters[(Role.ACCEPTED_PER_POS, (("engine", "0"),), "1")].value == 3


def test_histogram_buckets_are_sorted_by_bound_and_counted_from_the_inf_bucket() -> None:
    h = snap(V1).models["m"].histograms[("ttft", (("engine", "0"),))]
    assert h.buckets == ((0.5, 4), (INF, 9))
    assert h.count == 9
    assert h.created == 1_700_000_000


def test_duplicate_series_are_counted_and_the_last_one_wins() -> None:
    text = V1 + 'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 41\n'
    s = snap(text)
    assert s.duplicate_samples == 1
    assert s.models["m"].counters[(Role.DRAFT_TOKENS, (("engine", "0"),), "")].value == 41


def test_speculation_is_on_when_spec_counters_exist_even_at_zero() -> None:
    text = 'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 0\n'
    assert snap(text).models["m"].speculation


def test_speculation_is_off_when_spec_counters_are_absent() -> None:
    assert not snap('vllm:num_requests_running{engine="0",model_name="m"} 1\n').models["m"].speculation


def test_v0_is_told_apart_from_v1_by_its_gauge() -> None:
    text = (
        'vllm:spec_decode_draft_acceptance_rate{model_name="m"} 0.5\n'
        'vllm:spec_decode_num_draft_tokens_total{model_name="m"} 10\n'
        'vllm:num_requests_running{model_name="m"} 1\n'
    )
    s = snap(text)
    assert s.engine == "vllm-v0"
    assert s.models["m"].gauges[Role.ACCEPT_RATE_GAUGE] == (0.5,)


def test_renamed_gauges_are_read_under_either_name() -> None:
    old = snap('vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.4\n')
    new = snap('vllm:num_requests_running{model_name="m"} 1\nvllm:kv_cache_usage_perc{model_name="m"} 0.3\n')
    assert old.models["m"].gauges[Role.KV_CACHE_USAGE] == (0.4,)
    assert new.models["m"].gauges[Role.KV_CACHE_USAGE] == (0.3,)


def test_text_of_no_known_engine_gives_an_empty_snapshot() -> None:
    s = build_snapshot(SampleParser(["foo"]).parse("foo 1\n").samples, 1.0)
    assert s.dialect is None
    assert dict(s.models) == {}
