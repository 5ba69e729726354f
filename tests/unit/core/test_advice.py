"""The decision framework: each condition's reading and the one recommendation it leads to."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from sidecar.core.advice import (
    Action,
    AdviceConfig,
    BucketInput,
    Condition,
    Slo,
    Status,
    advice_json,
    advise,
    advise_stats,
    bucket_inputs,
    slo_from,
    temperature_order,
)
from sidecar.core.stats import Stats
from sidecar.core.verdict import Thresholds, Verdict
from tests.support.stats_builders import bucket, model

TPOT = AdviceConfig(slo=Slo.TPOT)


def test_healthy_homogeneous_traffic_with_a_tpot_slo_is_kept() -> None:
    advice = advise(model(), [bucket("0", 95, 0.8), bucket("[1,+Inf)", 5, 0.6)], TPOT)
    assert advice.recommendation is Action.KEEP
    assert {f.status for f in advice.findings} == {Status.OK}
    assert "0.75" in advice.reasons[0]


def test_every_condition_of_the_framework_is_read_once_in_order() -> None:
    advice = advise(model(), [], TPOT)
    assert [f.condition for f in advice.findings] == list(Condition)


def test_mixed_workload_trap_healthy_aggregate_hides_a_losing_bucket_with_a_real_share() -> None:
    buckets = [bucket("0", 70, 0.90), bucket("[1,+Inf)", 30, 0.30)]
    advice = advise(model(acceptance_ratio=0.72), buckets, TPOT)
    trap = advice.finding(Condition.MIXED)
    assert trap.status is Status.BAD
    assert "[1,+Inf)" in trap.says and "30%" in trap.says and "0.30" in trap.says
    assert advice.recommendation is Action.DISABLE_FOR_SOME
    assert any("[1,+Inf)" in r for r in advice.reasons)


def test_a_borderline_aggregate_over_a_losing_bucket_is_not_called_healthy() -> None:
    buckets = [bucket("0", 60, 0.99), bucket("[0.3,0.6)", 40, 0.01)]
    trap = advise(model(acceptance_ratio=0.54), buckets, TPOT).finding(Condition.MIXED)
    assert trap.status is Status.BAD
    assert "looks healthy" not in trap.says
    assert trap.says.startswith("The aggregate 0.54 is above 0.5, but")


def test_a_losing_bucket_with_a_negligible_share_is_not_the_trap() -> None:
    buckets = [bucket("0", 190, 0.90), bucket("[1,+Inf)", 10, 0.30)]  # 5% < the 10% real share
    advice = advise(model(acceptance_ratio=0.85), buckets, TPOT)
    assert advice.finding(Condition.MIXED).status is Status.OK
    assert advice.recommendation is Action.KEEP


def test_buckets_with_too_few_requests_are_not_judged() -> None:
    buckets = [bucket("0", 9, 0.9), bucket("[1,+Inf)", 9, 0.1)]  # 9 < min_bucket_requests
    advice = advise(model(), buckets, TPOT)
    assert advice.finding(Condition.MIXED).status is Status.UNKNOWN
    assert advice.finding(Condition.BUCKET_P10).status is Status.UNKNOWN


def test_too_few_draft_tokens_means_collect_more_data_whatever_the_ratio() -> None:
    advice = advise(model(draft_tokens=150.0, acceptance_ratio=0.1), [], TPOT)
    assert advice.finding(Condition.DATA).status is Status.WARN
    assert advice.recommendation is Action.COLLECT_MORE
    assert "150" in advice.reasons[0] and "200" in advice.reasons[0]


def test_speculation_off_means_collect_more_data_with_a_way_to_get_it() -> None:
    off = model(speculation=False, acceptance_ratio=None, draft_tokens=None, verdict=Verdict.NO_DATA)
    advice = advise(off, [], TPOT)
    assert advice.finding(Condition.DATA).status is Status.UNKNOWN
    assert advice.recommendation is Action.COLLECT_MORE
    assert any("probe" in r for r in advice.reasons)


def test_low_acceptance_everywhere_is_disable() -> None:
    buckets = [bucket("0", 50, 0.45), bucket("[1,+Inf)", 50, 0.2)]
    advice = advise(model(acceptance_ratio=0.32), buckets, TPOT)
    assert advice.finding(Condition.ACCEPTANCE).status is Status.BAD
    assert advice.recommendation is Action.DISABLE


def test_low_aggregate_with_a_bucket_that_still_gains_is_disable_for_some_traffic() -> None:
    buckets = [bucket("0", 30, 0.80), bucket("[1,+Inf)", 70, 0.20)]
    advice = advise(model(acceptance_ratio=0.38), buckets, TPOT)
    assert advice.recommendation is Action.DISABLE_FOR_SOME
    assert any("temperature 0 still gains" in r for r in advice.reasons)


@pytest.mark.parametrize(
    ("slo", "kv", "expected"),
    [
        (Slo.TPOT, 0.3, Action.KEEP_BUT_WATCH),  # borderline: measure P99 under load
        (Slo.TTFT, 0.3, Action.DISABLE),  # borderline gain, and the SLO is one speculation cannot help
        (Slo.TPOT, 0.97, Action.DISABLE),  # borderline gain, and batches too big for free verification
        (Slo.TPOT, 0.85, Action.DISABLE),
    ],
)
def test_borderline_acceptance_is_kept_and_watched_unless_the_slo_or_load_tips_it(
    slo: Slo, kv: float, expected: Action
) -> None:
    advice = advise(model(acceptance_ratio=0.58, kv_cache_usage=kv), [], AdviceConfig(slo=slo))
    assert advice.finding(Condition.ACCEPTANCE).status is Status.WARN
    assert advice.recommendation is expected


def test_good_acceptance_under_a_ttft_slo_is_kept_but_watched() -> None:
    advice = advise(model(), [], AdviceConfig(slo=Slo.TTFT))
    assert advice.finding(Condition.SLO).status is Status.WARN
    assert "P99 400 ms" in advice.finding(Condition.SLO).says  # the TTFT the engine reports
    assert advice.recommendation is Action.KEEP_BUT_WATCH


@pytest.mark.parametrize(
    ("usage", "status"), [(None, Status.UNKNOWN), (0.5, Status.OK), (0.85, Status.WARN), (0.96, Status.BAD)]
)
def test_kv_cache_headroom_reading(usage: float | None, status: Status) -> None:
    assert advise(model(kv_cache_usage=usage), [], TPOT).finding(Condition.KV_CACHE).status is status


def test_no_slo_set_is_unknown_not_ok() -> None:
    finding = advise(model(), [], AdviceConfig()).finding(Condition.SLO)
    assert finding.status is Status.UNKNOWN and "--slo" in finding.says


def test_median_temperature_is_the_bucket_of_the_median_request_ignoring_default() -> None:
    buckets = [
        bucket("[1,+Inf)", 30, 0.3),
        bucket("0", 10, 0.9),
        bucket("default", 200, 0.5),  # temperature unknown: not in the median, but its share is named
        bucket("(0,0.3)", 10, 0.8),
        bucket("[0.3,0.7)", 50, 0.6),
    ]
    finding = advise(model(), buckets, TPOT).finding(Condition.TEMPERATURE)
    # Known requests in temperature order: 10, 10, 50, 30 → the 50th of 100 falls in [0.3,0.7).
    assert "median temperature in [0.3,0.7)" in finding.says
    assert "67% omit temperature" in finding.says
    assert finding.status is Status.WARN  # the largest bucket has 67% < 80%


@pytest.mark.parametrize(
    ("counts", "median"), [((60, 40), "median temperature 0"), ((40, 60), "median temperature in [1,+Inf)")]
)
def test_median_temperature_follows_the_request_counts(counts: tuple[int, int], median: str) -> None:
    buckets = [bucket("0", counts[0], 0.9), bucket("[1,+Inf)", counts[1], 0.6)]
    assert median in advise(model(), buckets, TPOT).finding(Condition.TEMPERATURE).says


def test_one_dominant_bucket_is_homogeneous() -> None:
    finding = advise(model(), [bucket("0", 85, 0.8), bucket("[1,+Inf)", 15, 0.7)], TPOT).finding(Condition.TEMPERATURE)
    assert finding.status is Status.OK
    assert "85% of requests at temperature 0" in finding.says


def test_no_tap_data_leaves_temperature_unknown() -> None:
    assert advise(model(), [], TPOT).finding(Condition.TEMPERATURE).status is Status.UNKNOWN


def test_p10_below_the_line_in_a_real_bucket_is_a_warning_naming_it() -> None:
    buckets = [bucket("0", 50, 0.9, p10=0.8), bucket("[0.7,1)", 50, 0.7, p10=0.35)]
    advice = advise(model(), buckets, TPOT)
    p10 = advice.finding(Condition.BUCKET_P10)
    assert p10.status is Status.WARN
    assert "[0.7,1)" in p10.says and "0.35" in p10.says
    assert advice.recommendation is Action.KEEP_BUT_WATCH


def test_temperature_order_sorts_labels_by_temperature() -> None:
    labels = ["[1,+Inf)", "(0,0.3)", "default", "[0.3,0.7)", "0", "invalid"]
    keys = {lab: key for lab in labels if (key := temperature_order(lab)) is not None}
    ordered = sorted(keys, key=keys.__getitem__)
    assert ordered == ["0", "(0,0.3)", "[0.3,0.7)", "[1,+Inf)"]


@dataclass
class _Summary:
    model_name: str
    bucket: str
    window_requests: int
    window_draft_tokens: int
    window_accepted_tokens: int
    p10: float | None


def test_bucket_inputs_take_the_window_numbers_of_one_model_only() -> None:
    rows = [_Summary("a", "0", 12, 400, 300, 0.6), _Summary("b", "0", 99, 1, 1, 1.0)]
    (only,) = bucket_inputs(rows, "a")
    assert only == BucketInput("0", 12, 400, 300, 0.6)
    assert only.acceptance == pytest.approx(0.75)


def test_advice_json_is_plain_json_with_one_recommendation() -> None:
    advice = advise(model(), [bucket("0", 70, 0.9), bucket("[1,+Inf)", 30, 0.3)], TPOT)
    body = json.loads(json.dumps(advice_json(advice)))
    assert body["model_name"] == "tiny"
    assert body["recommendation"] == "disable for some traffic"
    assert len(body["findings"]) == len(Condition)
    assert {f["status"] for f in body["findings"]} <= {"ok", "warn", "bad", "unknown"}
    assert body["reasons"] and all(isinstance(r, str) for r in body["reasons"])


def test_custom_thresholds_move_the_lines() -> None:
    strict = AdviceConfig(thresholds=Thresholds(disable_below=0.8, keep_from=0.9, min_draft_tokens=200), slo=Slo.TPOT)
    assert advise(model(acceptance_ratio=0.75), [], strict).recommendation is Action.DISABLE


def test_advise_stats_gives_each_model_its_own_buckets() -> None:
    stats = Stats("vllm", (model(model_name="a"), model(model_name="b", acceptance_ratio=0.3)), 60.0)
    rows = [_Summary("a", "0", 70, 7000, 6300, 0.85), _Summary("a", "[1,+Inf)", 30, 3000, 900, 0.2)]
    a, b = advise_stats(stats, rows, TPOT)
    assert (a.model_name, a.recommendation) == ("a", Action.DISABLE_FOR_SOME)  # its own hot bucket is the trap
    assert (b.model_name, b.recommendation) == ("b", Action.DISABLE)  # no buckets of its own, low aggregate
    assert advise_stats(Stats(None, (), None)) == ()


@pytest.mark.parametrize(
    ("value", "slo"), [("ttft", Slo.TTFT), ("tpot", Slo.TPOT), (None, None), ("", None), ("p99", None)]
)
def test_slo_setting_values_map_to_slo_or_none(value: object, slo: Slo | None) -> None:
    assert slo_from(value) is slo


def test_without_any_tap_data_the_per_bucket_readings_say_where_the_data_comes_from() -> None:
    advice = advise(model(), [], TPOT)
    for condition in (Condition.TEMPERATURE, Condition.BUCKET_P10, Condition.MIXED):
        finding = advice.finding(condition)
        assert finding.status is Status.UNKNOWN and "tap" in finding.says


def test_a_tiny_ratio_does_not_read_as_zero() -> None:
    says = advise(model(acceptance_ratio=0.004), [], TPOT).finding(Condition.ACCEPTANCE).says
    assert "0.004" in says and "0.00 " not in says
