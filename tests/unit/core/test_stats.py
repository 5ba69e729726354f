"""compute_stats from exposition text through the whole pure core: parse → snapshot → window → numbers.

Expected numbers are worked out by hand from the counter values in each test (shown in comments).
"""

from __future__ import annotations

import pytest

from sidecar.core.stats import AnalysisConfig, ModelStats, Stats, compute_stats
from sidecar.core.verdict import Thresholds, Verdict
from tests.support.exposition_text import CONFIG, Engine, only_model, stats_of, v1_text


def test_acceptance_numbers_over_a_window_of_one_engine() -> None:
    before = v1_text(Engine(100, 400, 200, [80, 60, 40, 20]))
    after = v1_text(Engine(300, 1200, 700, [250, 200, 150, 100]))
    m = only_model(stats_of(before, after))
    # Window: 200 drafts, 800 draft tokens, 500 accepted; per position 170, 140, 110, 80.
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (200, 800, 500)
    assert m.acceptance_ratio == pytest.approx(0.625)
    assert m.mean_acceptance_length == pytest.approx(3.5)  # 1 + 500/200
    assert m.position_acceptance == pytest.approx((0.85, 0.70, 0.55, 0.40))
    assert m.alpha_estimate == pytest.approx(0.85)
    assert m.num_speculative_tokens == 4
    assert m.breakeven_acceptance_length == pytest.approx(1.4)  # 1 + 4 x 0.1
    assert m.expected_speedup == pytest.approx(2.5)  # 3.5 / 1.4
    assert m.verdict is Verdict.BORDERLINE
    assert m.speculation


def test_a_single_snapshot_is_the_window_since_engine_start() -> None:
    m = only_model(stats_of(v1_text(Engine(200, 800, 600, [190, 160, 140, 110]))))
    assert m.acceptance_ratio == pytest.approx(0.75)
    assert m.mean_acceptance_length == pytest.approx(4.0)
    assert m.verdict is Verdict.KEEP


def test_data_parallel_engines_are_summed_per_model() -> None:
    before = v1_text(Engine(0, 0, 0, [0, 0], engine="0"), Engine(0, 0, 0, [0, 0], engine="1"))
    after = v1_text(Engine(100, 200, 150, [90, 60], engine="0"), Engine(50, 100, 10, [8, 2], engine="1"))
    m = only_model(stats_of(before, after))
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (150, 300, 160)
    assert m.acceptance_ratio == pytest.approx(160 / 300)
    assert m.position_acceptance == pytest.approx((98 / 150, 62 / 150))
    assert m.num_speculative_tokens == 2


def test_one_engine_restarting_alone_counts_the_sum_of_per_engine_increases() -> None:
    before = v1_text(Engine(500, 1000, 800, [420, 380], engine="0"), Engine(100, 200, 100, [60, 40], engine="1"))
    # Engine 0 restarted (new _created) and counted 25/50/30 since; engine 1 went on to 300/600/400.
    after = v1_text(
        Engine(25, 50, 30, [18, 12], engine="0", created=1_700_000_900.0),
        Engine(300, 600, 400, [230, 170], engine="1"),
    )
    m = only_model(stats_of(before, after))
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (225, 450, 330)
    assert m.acceptance_ratio == pytest.approx(330 / 450)


def test_restart_with_a_larger_value_is_seen_through_created() -> None:
    before = v1_text(Engine(10, 40, 30, [10, 10, 5, 5]))
    after = v1_text(Engine(20, 80, 20, [8, 6, 4, 2], created=1_700_000_500.0))
    m = only_model(stats_of(before, after))
    # draft tokens 80 > 40 but _created moved: the whole 80 is the window's, not 40.
    assert m.draft_tokens == 80
    assert m.accepted_tokens == 20


def test_counter_resets_inside_a_long_window_are_all_counted() -> None:
    texts = [
        v1_text(Engine(100, 400, 300, [100, 90, 60, 50])),
        v1_text(Engine(200, 800, 500, [180, 150, 100, 70])),
        v1_text(Engine(10, 40, 20, [8, 6, 4, 2], created=1_700_000_600.0)),
        v1_text(Engine(60, 240, 140, [50, 40, 30, 20], created=1_700_000_600.0)),
    ]
    m = only_model(stats_of(*texts))
    # 100 + 60 drafts, 400 + 240 draft tokens, 200 + 140 accepted.
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (160, 640, 340)


def test_two_models_are_reported_separately() -> None:
    text = v1_text(Engine(10, 40, 30, [10, 10, 5, 5], model="a"), Engine(10, 40, 10, [5, 3, 1, 1], model="b"))
    stats = stats_of(text)
    a, b = stats.model("a"), stats.model("b")
    assert a is not None and b is not None
    assert a.acceptance_ratio == pytest.approx(0.75)
    assert b.acceptance_ratio == pytest.approx(0.25)


def _assert_nothing_made_up(m: ModelStats) -> None:
    assert m.acceptance_ratio is None
    assert m.mean_acceptance_length is None
    assert m.alpha_estimate is None
    assert m.position_acceptance == ()
    assert m.expected_speedup is None
    assert m.verdict is Verdict.NO_DATA


def test_speculation_off_is_no_data_with_every_ratio_null() -> None:
    text = '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0",model_name="tiny"} 3\n'
    m = only_model(stats_of(text, text))
    assert not m.speculation
    _assert_nothing_made_up(m)
    assert m.num_speculative_tokens is None
    assert m.breakeven_acceptance_length is None
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (None, None, None)


def test_a_window_without_traffic_gives_nulls_not_zeros() -> None:
    text = v1_text(Engine(100, 400, 300, [90, 80, 70, 60]))
    m = only_model(stats_of(text, text))
    assert m.speculation
    assert m.draft_tokens == 0  # a count that really is zero
    _assert_nothing_made_up(m)
    assert m.num_speculative_tokens == 4  # k is configuration, known without traffic


def test_fewer_draft_tokens_than_the_minimum_is_no_data_even_with_a_ratio() -> None:
    before = v1_text(Engine(0, 0, 0, [0, 0, 0, 0]))
    after = v1_text(Engine(20, 80, 10, [5, 3, 1, 1]))
    m = only_model(stats_of(before, after))
    assert m.acceptance_ratio == pytest.approx(0.125)
    assert m.verdict is Verdict.NO_DATA
    lenient = only_model(stats_of(before, after, config=AnalysisConfig(Thresholds(min_draft_tokens=80))))
    assert lenient.verdict is Verdict.DISABLE


def test_latency_quantiles_are_taken_over_bucket_increases() -> None:
    buckets_before = [("0.1", 5), ("0.5", 5), ("1.0", 5), ("+Inf", 5)]
    buckets_after = [("0.1", 5), ("0.5", 15), ("1.0", 25), ("+Inf", 25)]
    before = v1_text(Engine(0, 0, 0, [0], ttft=buckets_before))
    after = v1_text(Engine(0, 0, 0, [0], ttft=buckets_after))
    m = only_model(stats_of(before, after))
    # Deltas (0.1: 0, 0.5: 10, 1.0: 20, +Inf: 20): rank q·20 interpolated in its bucket.
    q = m.latency["ttft"]
    assert (q.p50, q.p90, q.p95, q.p99) == pytest.approx((0.5, 0.9, 0.95, 0.99))
    assert m.p99_p50_ratio["ttft"] == pytest.approx(1.98)
    assert m.latency_observations["ttft"] == 20


def test_latency_of_engines_is_summed_by_bound_and_a_reset_engine_counts_from_zero() -> None:
    before = v1_text(
        Engine(0, 0, 0, [0], engine="0", ttft=[("1.0", 100), ("+Inf", 100)]),
        Engine(0, 0, 0, [0], engine="1", ttft=[("1.0", 0), ("+Inf", 0)]),
    )
    after = v1_text(
        Engine(0, 0, 0, [0], engine="0", ttft=[("1.0", 4), ("+Inf", 4)], created=1_700_000_500.0),
        Engine(0, 0, 0, [0], engine="1", ttft=[("1.0", 4), ("+Inf", 8)]),
    )
    m = only_model(stats_of(before, after))
    # Summed deltas: le=1.0 → 4 + 4, +Inf → 4 + 8. p50 rank 6 falls in the first bucket: 6/8 of the way to 1.0.
    assert m.latency_observations["ttft"] == 12
    assert m.latency["ttft"].p50 == pytest.approx(0.75)
    assert m.latency["ttft"].p99 == pytest.approx(1.0)  # in +Inf: the highest finite bound


def test_latency_without_new_observations_is_null_not_zero() -> None:
    text = v1_text(Engine(0, 0, 0, [0], ttft=[("0.1", 3), ("+Inf", 3)]))
    m = only_model(stats_of(text, text))
    assert m.latency["ttft"].as_dict() == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert m.p99_p50_ratio["ttft"] is None
    assert m.latency_observations["ttft"] == 0


V0_TEXT = """\
# TYPE vllm:spec_decode_draft_acceptance_rate gauge
vllm:spec_decode_draft_acceptance_rate{{model_name="old"}} {rate}
# TYPE vllm:spec_decode_efficiency gauge
vllm:spec_decode_efficiency{{model_name="old"}} 0.5
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{{model_name="old"}} {draft}
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{{model_name="old"}} {accepted}
"""


def test_v0_payload_is_read_from_its_counters_and_flagged_not_comparable() -> None:
    stats = stats_of(
        V0_TEXT.format(rate=0.5, draft=100, accepted=50), V0_TEXT.format(rate=0.6, draft=500, accepted=330)
    )
    m = only_model(stats)
    assert stats.engine == "vllm-v0"
    assert m.acceptance_ratio == pytest.approx(280 / 400)
    assert not m.comparable
    assert m.mean_acceptance_length is None  # V0 has no drafts counter
    assert m.verdict is Verdict.KEEP


SGLANG_TEXT = """\
sglang:spec_accept_rate{{model_name="qwen",tp_rank="0"}} {rate}
sglang:spec_accept_length{{model_name="qwen",tp_rank="0"}} {length}
sglang:generation_tokens_total{{model_name="qwen",tp_rank="0"}} {generated}
sglang:num_running_reqs{{model_name="qwen",tp_rank="0"}} 2
"""


def test_sglang_spec_gauges_are_averaged_over_the_window() -> None:
    texts = [
        SGLANG_TEXT.format(rate=0.6, length=2.0, generated=1000),
        SGLANG_TEXT.format(rate=0.7, length=3.0, generated=1500),
        SGLANG_TEXT.format(rate=0.8, length=4.0, generated=2000),
    ]
    stats = stats_of(*texts)
    m = only_model(stats)
    assert stats.engine == "sglang"
    assert m.speculation
    assert m.acceptance_ratio == pytest.approx(0.7)
    assert m.mean_acceptance_length == pytest.approx(3.0)
    assert m.generation_tokens == 1000
    assert m.generation_tokens_per_second == pytest.approx(1000 / 20)
    assert m.verdict is Verdict.KEEP


def test_sglang_with_speculation_off_writes_zero_gauges_and_is_no_data() -> None:
    text = SGLANG_TEXT.format(rate=0.0, length=0.0, generated=1000)
    m = only_model(stats_of(text, text.replace("1000", "5000")))
    assert not m.speculation
    _assert_nothing_made_up(m)


def test_sglang_scrapes_taken_with_speculation_off_do_not_drag_the_average_down() -> None:
    texts = [
        SGLANG_TEXT.format(rate=0.0, length=0.0, generated=1000),  # off; then restarted with speculation
        SGLANG_TEXT.format(rate=0.6, length=2.5, generated=200),
        SGLANG_TEXT.format(rate=0.8, length=3.5, generated=900),
    ]
    m = only_model(stats_of(*texts))
    assert m.acceptance_ratio == pytest.approx(0.7)
    assert m.mean_acceptance_length == pytest.approx(3.0)


def test_generation_rate_needs_two_timed_snapshots() -> None:
    text = SGLANG_TEXT.format(rate=0.7, length=3.0, generated=1000)
    assert only_model(stats_of(text)).generation_tokens_per_second is None


def test_no_snapshots_give_no_models() -> None:
    assert compute_stats([], CONFIG) == Stats(None, (), None)
