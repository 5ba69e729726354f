"""The Prometheus adapter, one function at a time: PromQL text, the API's JSON, HTTP failures, and the
assembly of query answers into a Snapshot whose Stats equal the scrape path's for the same increases.

HTTP goes through httpx.MockTransport (a unit test of the adapter); the real server is in
tests/integration/control/test_fleet_prometheus.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import ValidationError

from sidecar.adapters.kube import namespace
from sidecar.adapters.prometheus import (
    FleetResult,
    QueryError,
    VectorSample,
    assemble,
    dialect_query,
    increase_query,
    instant_query,
    parse_vector,
    range_duration,
)
from sidecar.control.fleet import FleetSource, default_selector, fleet_stats
from sidecar.core.catalog import VLLM_V1
from sidecar.core.quantile import histogram_mean
from sidecar.core.stats import AnalysisConfig, compute_stats
from sidecar.scrape.fetch import parse_payload
from sidecar.settings import Settings
from tests.support.fleet import FLEET, SELECTOR, fake_prometheus, fleet_round, vector
from tests.support.payloads import vllm_payload

# --- PromQL text ---------------------------------------------------------------------------------------


def test_window_durations_are_whole_milliseconds_because_promql_takes_no_fractions() -> None:
    assert range_duration(60) == "60000ms"
    assert range_duration(0.5) == "500ms"
    assert range_duration(2.0004) == "2000ms"


def test_an_increase_query_sums_the_selected_pods_by_the_given_labels() -> None:
    query = increase_query("vllm:spec_decode_num_draft_tokens_total", SELECTOR, 30, ("model_name",))
    assert query == (
        "sum by (model_name) (increase(vllm:spec_decode_num_draft_tokens_total"
        '{namespace="ml",pod=~"llm-[a-z0-9]+-[a-z0-9]+"}[30000ms]))'
    )


def test_the_dialect_query_asks_for_every_engines_markers_within_the_selector() -> None:
    query = dialect_query(SELECTOR)
    assert query.startswith('group by (__name__) ({__name__=~"')
    assert "vllm:num_requests_running|" in query and "sglang:spec_accept_rate" in query
    assert query.endswith(f",{SELECTOR}}})")


def test_the_default_selector_takes_only_the_deployments_pods_in_its_namespace() -> None:
    assert default_selector("llm", "ml") == SELECTOR
    assert default_selector("llm.v2", None) == 'pod=~"llm[.]v2-[a-z0-9]+-[a-z0-9]+"'
    assert default_selector(None, "ml") == 'namespace="ml"'


def test_an_explicit_selector_setting_wins_over_the_default() -> None:
    settings = Settings(prometheus_url="http://p:9090", deployment="llm", prometheus_selector='job="vllm"')
    assert FleetSource(settings).query.selector == 'job="vllm"'


def test_fleet_mode_without_a_selector_or_a_deployment_is_refused_rather_than_summing_every_engine() -> None:
    with pytest.raises(ValidationError, match="needs --prometheus-selector or --deployment"):
        Settings(prometheus_url="http://p:9090", deployment_file="deploy.yaml")
    assert Settings(prometheus_url="http://p:9090", prometheus_selector='job="vllm"').prometheus_selector


def test_without_namespace_the_selector_takes_the_namespace_the_kubernetes_actuator_acts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "namespace"
    own.write_text("inference\n")
    monkeypatch.setattr(namespace, "SERVICE_ACCOUNT_NAMESPACE", own)
    settings = Settings(prometheus_url="http://p:9090", deployment="llm")
    assert FleetSource(settings).query.selector == 'namespace="inference",pod=~"llm-[a-z0-9]+-[a-z0-9]+"'


# --- the API's JSON ------------------------------------------------------------------------------------


def test_a_vector_answer_becomes_labelled_samples_including_special_floats() -> None:
    body = vector(({"model_name": "a"}, 12.5), ({"model_name": "b"}, "NaN"), ({"model_name": "c"}, "+Inf"))
    samples = parse_vector(body)
    assert [s.labels["model_name"] for s in samples] == ["a", "b", "c"]
    assert samples[0].value == 12.5
    assert samples[1].value != samples[1].value  # NaN
    assert samples[2].value == float("inf")


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not prometheus</html>",
        json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode(),
        json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(),
        json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}).encode(),
        json.dumps([1, 2, 3]).encode(),
    ],
)
def test_anything_but_a_well_formed_vector_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(QueryError) as raised:
        parse_vector(body)
    assert raised.value.reason == "bad_response"


# --- HTTP --------------------------------------------------------------------------------------------


def run_query(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[VectorSample, ...]:
    async def go() -> tuple[VectorSample, ...]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await instant_query(client, "http://prom:9090/", "up", at=1700000000.25, timeout=1)

    return asyncio.run(go())


def test_a_query_is_posted_as_a_form_with_the_evaluation_time() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=vector(({"job": "x"}, 1)))

    assert run_query(handler)[0].labels == {"job": "x"}
    assert seen[0].method == "POST" and seen[0].url.path == "/api/v1/query"
    assert parse_qs(seen[0].content.decode()) == {"query": ["up"], "time": ["1700000000.250"]}


@pytest.mark.parametrize(
    ("handler_error", "reason"),
    [
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("closed"), "unreachable"),
    ],
)
def test_transport_failures_become_query_errors_with_a_reason(handler_error: Exception, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise handler_error

    with pytest.raises(QueryError) as raised:
        run_query(handler)
    assert raised.value.reason == reason


def test_a_non_200_answer_is_an_http_error() -> None:
    with pytest.raises(QueryError) as raised:
        run_query(lambda request: httpx.Response(503, text="Service Unavailable"))
    assert raised.value.reason == "http_error"
    assert "503" in raised.value.detail


# --- a whole round against a fake Prometheus -------------------------------------------------------------


def test_a_round_gives_the_fleets_increases_and_the_core_computes_its_numbers() -> None:
    result = fleet_round(fake_prometheus(FLEET))
    assert result.result == "success" and result.snapshot is not None
    stats = fleet_stats(result.snapshot, 60, AnalysisConfig())
    (m,) = stats.models
    assert stats.window_seconds == 60
    assert m.speculation
    assert (m.drafts, m.draft_tokens, m.accepted_tokens) == (300, 1200, 480)
    assert m.acceptance_ratio == pytest.approx(0.4)
    assert m.mean_acceptance_length == pytest.approx(1 + 480 / 300)
    assert m.num_speculative_tokens == 4
    assert m.position_acceptance == pytest.approx((200 / 300, 140 / 300, 90 / 300, 50 / 300))
    assert m.latency_observations["ttft"] == 100
    assert m.latency["ttft"].p50 == pytest.approx(0.1)
    assert m.kv_cache_usage == pytest.approx(0.4)


def test_without_spec_decode_series_the_fleet_has_speculation_off_not_zero_acceptance() -> None:
    answers = {k: v for k, v in FLEET.items() if "spec_decode" not in k}
    result = fleet_round(fake_prometheus(answers))
    assert result.snapshot is not None
    (m,) = fleet_stats(result.snapshot, 60, AnalysisConfig()).models
    assert not m.speculation
    assert m.acceptance_ratio is None and m.draft_tokens is None


def test_one_failing_query_fails_the_whole_round_so_no_partial_numbers_reach_the_policy() -> None:
    result = fleet_round(fake_prometheus(FLEET, fail="num_accepted_tokens_total"))
    assert (result.result, result.snapshot) == ("http_error", None)


def test_no_engine_series_for_the_selector_is_an_empty_round_not_a_fleet_without_speculation() -> None:
    result = fleet_round(fake_prometheus({}))
    assert (result.result, result.snapshot) == ("empty", None)
    assert SELECTOR in result.detail


def test_the_first_spelling_of_a_renamed_histogram_with_data_wins() -> None:
    itl = VLLM_V1.histograms["itl"]
    assert len(itl) == 2
    old = [VectorSample({"model_name": "m", "le": le}, v) for le, v in (("0.01", 5), ("+Inf", 10))]
    new = [VectorSample({"model_name": "m", "le": le}, v) for le, v in (("0.05", 7), ("+Inf", 8))]
    answers = {("histogram", "itl", itl[0]): new, ("histogram", "itl", itl[1]): old}
    snapshot = assemble(VLLM_V1, answers, taken_at=0)
    assert snapshot.models["m"].histograms[("itl", ())].buckets == ((0.05, 7), (float("inf"), 8))
    only_old = {("histogram", "itl", itl[0]): [], ("histogram", "itl", itl[1]): old}
    snapshot = assemble(VLLM_V1, only_old, taken_at=0)
    assert snapshot.models["m"].histograms[("itl", ())].count == 10


# --- the same numbers as the scrape path -------------------------------------------------------------------


def test_the_fleet_path_gives_the_scrape_paths_stats_for_the_same_increases() -> None:
    """Two engines scraped before and after a window (the scrape path) against Prometheus answering the sums
    of their increases (the fleet path): every derived number must agree."""
    buckets_before = (("0.1", 0.0), ("1.0", 0.0), ("+Inf", 0.0))
    grown = {"0": (("0.1", 30.0), ("1.0", 60.0), ("+Inf", 70.0)), "1": (("0.1", 5.0), ("1.0", 25.0), ("+Inf", 30.0))}
    counts = {"0": (100, 400, 300, (100, 90, 70, 40)), "1": (50, 200, 20, (15, 4, 1, 0))}
    ttft_sums = {"0": 12.5, "1": 4.0}  # seconds, after the window (0 before)

    def text(after: bool) -> str:
        parts = []
        for engine, (drafts, tokens, accepted, positions) in counts.items():
            scale = 1 if after else 0
            parts.append(
                vllm_payload(
                    drafts=drafts * scale,
                    draft_tokens=tokens * scale,
                    accepted=accepted * scale,
                    per_position=[p * scale for p in positions],
                    engine=engine,
                    ttft_buckets=grown[engine] if after else buckets_before,
                    ttft_sum=ttft_sums[engine] if after else 0.0,
                )
            )
        return "".join(parts)

    before, _, _ = parse_payload(text(False), 0.0)
    after, _, _ = parse_payload(text(True), 60.0)
    scraped = compute_stats([before, after], AnalysisConfig()).models[0]

    sums = {
        "vllm:spec_decode_num_drafts_total": 150,
        "vllm:spec_decode_num_draft_tokens_total": 600,
        "vllm:spec_decode_num_accepted_tokens_total": 320,
    }
    answers: dict[str, list[tuple[dict[str, str], float]]] = {
        "group by (__name__)": [({"__name__": "vllm:spec_decode_num_draft_tokens_total"}, 1)],
        **{name: [({"model_name": "tiny"}, value)] for name, value in sums.items()},
        "vllm:spec_decode_num_accepted_tokens_per_pos_total": [
            ({"model_name": "tiny", "position": str(i)}, v) for i, v in enumerate((115, 94, 71, 40))
        ],
        "vllm:time_to_first_token_seconds_bucket": [
            ({"model_name": "tiny", "le": le}, v) for le, v in (("0.1", 35), ("1.0", 85), ("+Inf", 100))
        ],
        "vllm:time_to_first_token_seconds_sum": [({"model_name": "tiny"}, 16.5)],
    }
    result = fleet_round(fake_prometheus(answers), window=60)
    assert result.snapshot is not None
    from_fleet = fleet_stats(result.snapshot, 60, AnalysisConfig()).models[0]
    # The fake answers no load query, so the fleet's load is unknown; every other number, the exact mean latency
    # from the _sum increases included (not the buckets' estimate), is the scrape path's.
    assert from_fleet == replace(scraped, requests_running=None)
    assert from_fleet.latency_mean["ttft"] == pytest.approx(16.5 / 100)
    assert from_fleet.latency_mean["ttft"] != pytest.approx(histogram_mean(((0.1, 35), (1.0, 85), (math.inf, 100))))


# --- the source -------------------------------------------------------------------------------------------


def test_a_failed_round_leaves_no_stats_and_is_counted_by_result() -> None:
    fleet = FleetSource(Settings(prometheus_url="http://prom:9090", prometheus_selector=SELECTOR, window=60))
    ok = fleet_round(fake_prometheus(FLEET))
    assert fleet.observe(ok) is not None
    assert fleet.observe(FleetResult("unreachable", None, 0.01, "refused")) is None
    assert fleet.stats is None
    assert fleet.observe(FleetResult("unreachable", None, 0.01, "refused")) is None
    assert fleet.results["success"] == 1 and fleet.results["unreachable"] == 2
    assert fleet.results["timeout"] == 0  # every result is there from the start
    assert fleet.status()["last_result"] == "unreachable"
