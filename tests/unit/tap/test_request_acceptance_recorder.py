"""The tap's recorder and its Prometheus collector (sidecar/tap/recorder.py), with a fake clock."""

from __future__ import annotations

import statistics

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.request_acceptance import SpecCounts
from sidecar.tap.recorder import (
    ERROR_BODY_TOO_LARGE,
    ERROR_PATH_REFUSED,
    ERROR_REASONS,
    ERROR_UPSTREAM_BROKE,
    RequestRecord,
    TapRecorder,
    sample_quantile,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    recorder: TapRecorder, draft: int, accepted: int, bucket: str = "0", source: str = "per_request_metrics"
) -> None:
    spec = SpecCounts(draft, accepted)
    recorder.record(RequestRecord("m", bucket, source, spec, ttft_seconds=0.2, tpot_seconds=0.02))


def samples(recorder: TapRecorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(recorder.collector())
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_bucket_acceptance_is_token_weighted_not_an_average_of_request_ratios() -> None:
    recorder = TapRecorder(clock=Clock())
    record(recorder, 100, 90)
    record(recorder, 10, 0)
    (row,) = recorder.bucket_summary()
    assert row.acceptance == 90 / 110
    assert row.p50 == (0.9 + 0.0) / 2


def test_quantiles_agree_with_the_standard_librarys_inclusive_method() -> None:
    recorder = TapRecorder(clock=Clock())
    pairs = [(40, 3), (40, 11), (40, 20), (40, 25), (40, 31), (40, 36), (8, 8)]
    for draft, accepted in pairs:
        record(recorder, draft, accepted)
    ratios = [a / d for d, a in pairs]
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    (row,) = recorder.bucket_summary()
    assert row.p10 is not None and abs(row.p10 - deciles[0]) < 1e-12
    assert row.p50 is not None and abs(row.p50 - statistics.median(ratios)) < 1e-12
    assert row.p90 is not None and abs(row.p90 - deciles[8]) < 1e-12


def test_sample_quantile_of_nothing_is_unknown() -> None:
    assert sample_quantile([], 0.5) is None


def test_requests_leave_the_window_but_stay_in_the_totals() -> None:
    clock = Clock()
    recorder = TapRecorder(window_seconds=60, clock=clock)
    record(recorder, 10, 5)
    clock.now += 61
    record(recorder, 10, 9)
    (row,) = recorder.bucket_summary()
    assert (row.window_requests, row.window_draft_tokens, row.window_accepted_tokens) == (1, 10, 9)
    assert (row.requests, row.draft_tokens, row.accepted_tokens) == (2, 20, 14)
    clock.now += 61
    (row,) = recorder.bucket_summary()
    assert row.acceptance is None and row.p50 is None and row.window_requests == 0


def test_requests_without_acceptance_count_by_source_but_carry_no_ratio() -> None:
    recorder = TapRecorder(clock=Clock())
    recorder.record(RequestRecord("m", "default", "none"))
    (row,) = recorder.bucket_summary()
    assert row.sources["none"] == 1 and row.requests == 1
    assert row.acceptance is None and row.p10 is None


def test_exported_counters_are_the_sums_of_what_was_recorded_per_model_and_bucket() -> None:
    recorder = TapRecorder(clock=Clock())
    record(recorder, 12, 6, bucket="0")
    record(recorder, 8, 8, bucket="0")
    record(recorder, 20, 2, bucket="[1,+Inf)", source="chunk_estimate")
    got = samples(recorder)
    zero = (("model_name", "m"), ("temperature_bucket", "0"))
    hot = (("model_name", "m"), ("temperature_bucket", "[1,+Inf)"))
    assert got[("specdecode_request_draft_tokens_total", zero)] == 20
    assert got[("specdecode_request_accepted_tokens_total", zero)] == 14
    assert got[("specdecode_request_accepted_tokens_total", hot)] == 2
    assert got[("specdecode_tapped_requests_total", (*zero[:1], ("source", "per_request_metrics"), zero[1]))] == 2
    assert got[("specdecode_tapped_requests_total", (*hot[:1], ("source", "chunk_estimate"), hot[1]))] == 1
    assert got[("specdecode_bucket_acceptance_ratio", zero)] == 14 / 20
    assert got[("specdecode_request_acceptance_ratio_count", zero)] == 2
    assert got[("specdecode_request_acceptance_ratio_bucket", (("le", "0.5"), *zero))] == 1
    assert got[("specdecode_request_acceptance_ratio_bucket", (("le", "+Inf"), *zero))] == 2
    assert got[("specdecode_request_ttft_seconds_count", zero)] == 2
    assert got[("specdecode_request_tpot_seconds_sum", hot)] == 0.02
    assert got[("specdecode_bucket_acceptance_quantile", (*zero[:1], ("quantile", "0.5"), zero[1]))] == 0.75


def test_gauges_with_no_data_in_the_window_are_absent_not_zero() -> None:
    clock = Clock()
    recorder = TapRecorder(window_seconds=10, clock=clock)
    record(recorder, 10, 5)
    clock.now += 11
    names = {name for name, _ in samples(recorder)}
    assert "specdecode_request_draft_tokens_total" in names
    assert "specdecode_bucket_acceptance_ratio" not in names
    assert "specdecode_bucket_acceptance_quantile" not in names


def test_an_empty_recorder_exports_no_bucket_samples_and_every_error_reason_at_zero() -> None:
    exported = samples(TapRecorder())
    assert {name for name, _ in exported} == {"specdecode_tap_errors_total"}
    assert {labels: value for (_, labels), value in exported.items()} == {
        (("reason", reason),): 0.0 for reason in ERROR_REASONS
    }


def test_errors_are_counted_by_reason() -> None:
    recorder = TapRecorder()
    recorder.error(ERROR_UPSTREAM_BROKE)
    recorder.error(ERROR_UPSTREAM_BROKE)
    recorder.error(ERROR_PATH_REFUSED)
    exported = samples(recorder)
    assert exported[("specdecode_tap_errors_total", (("reason", ERROR_UPSTREAM_BROKE),))] == 2.0
    assert exported[("specdecode_tap_errors_total", (("reason", ERROR_PATH_REFUSED),))] == 1.0
    assert exported[("specdecode_tap_errors_total", (("reason", ERROR_BODY_TOO_LARGE),))] == 0.0
