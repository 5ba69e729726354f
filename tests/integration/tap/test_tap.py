"""The tap in the real sidecar app under real uvicorn, against a replaying vLLM stand-in over real sockets.

Every "what vLLM would give" expectation is the stand-in's own answer to the same request sent directly, so
the tests compare relayed bytes with unrelayed bytes, never with what the tap's code computes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.replay import free_port
from tests.support.sidecar_process import wait_until
from tests.support.tap_server import TapServer, tap_server
from tests.support.tap_upstream import MODEL, TapUpstream, load_recorded, running_upstream

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def body(path: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {"model": MODEL, "max_tokens": 24}
    base |= {"messages": [{"role": "user", "content": "Hello"}]} if path == CHAT else {"prompt": "Hello"}
    return base | fields


def metrics(server: TapServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def bucket_value(server: TapServer, name: str, bucket: str, **extra: str) -> float:
    labels = tuple(sorted({"model_name": MODEL, "temperature_bucket": bucket, **extra}.items()))
    return metrics(server).get((name, labels), 0.0)


@pytest.fixture(scope="module")
def upstream() -> Iterator[TapUpstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def tap(upstream: TapUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TapServer]:
    # The stand-in's /echo and /status paths are not vLLM's: forwarded here like any path an operator allows.
    env = {"SPEC_SIDECAR_TAP_MAX_BODY_BYTES": "4096", "SPEC_SIDECAR_TAP_FORWARD_PATHS": "openai,/echo/*,/status/*"}
    with tap_server(tmp_path_factory.mktemp("tap"), upstream.url, **env) as server:
        yield server


@pytest.fixture(autouse=True)
def unpaced(upstream: TapUpstream) -> Iterator[None]:
    upstream.step_rate, upstream.non_stream_delay = 0.0, 0.0
    yield
    upstream.step_rate, upstream.non_stream_delay = 0.0, 0.0


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("client_asked_usage", [False, True])
def test_a_stream_reaches_the_client_byte_for_byte_as_vllm_sent_it(
    upstream: TapUpstream, tap: TapServer, path: str, client_asked_usage: bool
) -> None:
    request = body(path, stream=True, temperature=0.5)
    if client_asked_usage:
        request["stream_options"] = {"include_usage": True}
    direct = httpx.post(upstream.url + path, json=request)
    relayed = httpx.post(tap.url + path, json=request)
    assert relayed.status_code == direct.status_code == 200
    assert relayed.content == direct.content
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    assert (b'"usage"' in relayed.content) is client_asked_usage


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_json_response_reaches_the_client_byte_for_byte_with_its_length(
    upstream: TapUpstream, tap: TapServer, path: str
) -> None:
    request = body(path, temperature=0)
    direct = httpx.post(upstream.url + path, json=request)
    relayed = httpx.post(tap.url + path, json=request)
    assert relayed.content == direct.content
    assert relayed.headers["content-length"] == direct.headers["content-length"]


def test_stream_chunks_are_relayed_as_they_come_not_after_the_stream_ends(
    upstream: TapUpstream, tap: TapServer
) -> None:
    upstream.step_rate = 10.0  # an event every 100 ms
    arrivals = []
    with httpx.stream("POST", tap.url + COMPLETIONS, json=body(COMPLETIONS, stream=True, max_tokens=40)) as r:
        for _ in r.iter_raw():
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sorted(gaps)[len(gaps) // 2] > 0.05


def test_the_tap_asks_vllm_for_usage_and_counts_what_vllm_reported_per_bucket(
    upstream: TapUpstream, tap: TapServer
) -> None:
    before_draft = bucket_value(tap, "specdecode_request_draft_tokens_total", "[1,+Inf)")
    before_accepted = bucket_value(tap, "specdecode_request_accepted_tokens_total", "[1,+Inf)")
    expected_draft = expected_accepted = 0
    for i, path in enumerate([CHAT, COMPLETIONS, CHAT]):
        request = body(path, stream=True, temperature=1.0, max_tokens=20 + i)
        asked = request | {"stream_options": {"include_usage": True}}
        lines = httpx.post(upstream.url + path, json=asked).content.split(b"\n\n")
        spec = json.loads(lines[-3][len(b"data: ") :])["metrics"]["speculative_decoding"]
        expected_draft += spec["num_draft_tokens"]
        expected_accepted += spec["num_accepted_draft_tokens"]
        relayed = httpx.post(tap.url + path, json=request)
        assert b"speculative_decoding" not in relayed.content
        sent = upstream.seen.requests[-1]
        assert sent["stream_options"] == {"include_usage": True}
    draft = bucket_value(tap, "specdecode_request_draft_tokens_total", "[1,+Inf)") - before_draft
    accepted = bucket_value(tap, "specdecode_request_accepted_tokens_total", "[1,+Inf)") - before_accepted
    assert (draft, accepted) == (expected_draft, expected_accepted)


def test_requests_without_temperature_are_counted_under_default(upstream: TapUpstream, tap: TapServer) -> None:
    name, source = "specdecode_tapped_requests_total", {"source": "per_request_metrics"}
    before = bucket_value(tap, name, "default", **source)
    httpx.post(tap.url + COMPLETIONS, json=body(COMPLETIONS))
    assert bucket_value(tap, name, "default", **source) == before + 1


def test_an_oversized_observed_body_gets_a_413_json_error_and_never_reaches_vllm(
    upstream: TapUpstream, tap: TapServer
) -> None:
    seen = len(upstream.seen.raw_bodies)
    response = httpx.post(tap.url + COMPLETIONS, json=body(COMPLETIONS, prompt="x" * 5000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413
    assert len(upstream.seen.raw_bodies) == seen


def test_an_oversized_body_sent_in_chunks_without_a_length_is_refused_too(
    upstream: TapUpstream, tap: TapServer
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(tap.url + COMPLETIONS, content=chunks())
    assert response.status_code == 413


def test_malformed_json_is_forwarded_unchanged_and_vllms_error_comes_back_unattributed(
    upstream: TapUpstream, tap: TapServer
) -> None:
    before = metrics(tap)
    raw = b'{"model": "tiny-llama", "prompt": "x",'
    direct = httpx.post(upstream.url + COMPLETIONS, content=raw, headers={"content-type": "application/json"})
    relayed = httpx.post(tap.url + COMPLETIONS, content=raw, headers={"content-type": "application/json"})
    assert upstream.seen.raw_bodies[-1] == raw
    assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content) == (400, direct.content)
    assert {k: v for k, v in metrics(tap).items() if "tapped" in k[0]} == {
        k: v for k, v in before.items() if "tapped" in k[0]
    }


@pytest.mark.parametrize("status", [400, 500])
def test_upstream_errors_on_observed_routes_pass_through(upstream: TapUpstream, tap: TapServer, status: int) -> None:
    request = body(CHAT, model=f"fail-{status}", stream=True)
    direct = httpx.post(upstream.url + CHAT, json=request)
    relayed = httpx.post(tap.url + CHAT, json=request)
    assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content)
    assert relayed.status_code == status


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_other_paths_and_methods_pass_through_with_status_and_body(
    upstream: TapUpstream, tap: TapServer, method: str
) -> None:
    direct = httpx.request(method, upstream.url + "/status/418")
    relayed = httpx.request(method, tap.url + "/status/418")
    assert (relayed.status_code, relayed.content) == (418, direct.content)


def test_pass_through_keeps_path_query_body_and_end_to_end_headers_and_drops_hop_by_hop_ones(
    upstream: TapUpstream, tap: TapServer
) -> None:
    headers = {"x-custom": "kept", "authorization": "Bearer t", "connection": "x-private", "x-private": "dropped"}
    response = httpx.put(tap.url + "/echo/a%20b/c?q=1&r=%2F", content=b"payload \x00\xff", headers=headers)
    echo = response.json()
    seen = dict(echo["headers"])
    assert (echo["method"], echo["path"], echo["query"]) == ("PUT", "/echo/a%20b/c", "q=1&r=%2F")
    assert echo["body"].encode("latin-1") == b"payload \x00\xff"
    assert seen["x-custom"] == "kept" and seen["authorization"] == "Bearer t"
    assert "x-private" not in seen
    assert response.headers["x-replay"] == "echo"
    assert "keep-alive" not in response.headers  # hop-by-hop from the upstream's side


def test_a_pass_through_body_streamed_without_a_length_arrives_whole(upstream: TapUpstream, tap: TapServer) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(50):
            yield b"%04d" % i

    echo = httpx.post(tap.url + "/echo/upload", content=chunks()).json()
    assert echo["body"] == "".join(f"{i:04d}" for i in range(50))


def test_a_large_pass_through_body_with_a_length_is_streamed_through_whole(
    upstream: TapUpstream, tap: TapServer
) -> None:
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB: above what the tap reads before forwarding
    echo = httpx.post(tap.url + "/echo/big", content=payload, timeout=30).json()
    assert echo["body"].encode("latin-1") == payload
    assert ["content-length", str(len(payload))] in echo["headers"]


def test_an_unreachable_upstream_gives_a_502_json_error(tmp_path: Path) -> None:
    with tap_server(tmp_path, f"http://127.0.0.1:{free_port()}") as server:
        response = httpx.post(server.url + COMPLETIONS, json=body(COMPLETIONS))
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "bad_gateway"
        assert httpx.get(server.url + "/v1/models").status_code == 502


def test_a_client_that_leaves_a_stream_cancels_the_upstream_request(upstream: TapUpstream, tap: TapServer) -> None:
    upstream.step_rate = 20.0  # 200 tokens → many seconds of stream
    cut, completed = upstream.seen.cut_short, upstream.seen.completed
    with httpx.stream("POST", tap.url + CHAT, json=body(CHAT, stream=True, max_tokens=200)) as r:
        next(r.iter_raw())
    wait_until(lambda: upstream.seen.cut_short == cut + 1, 3)
    assert upstream.seen.completed == completed


def test_a_client_that_gives_up_on_a_json_request_cancels_the_upstream_request(
    upstream: TapUpstream, tap: TapServer
) -> None:
    upstream.non_stream_delay = 5.0
    cut = upstream.seen.cut_short
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tap.url + COMPLETIONS, json=body(COMPLETIONS), timeout=httpx.Timeout(5, read=0.5))
    wait_until(lambda: upstream.seen.cut_short == cut + 1, 3)


def test_the_chunk_estimate_stands_in_when_vllm_returns_no_per_request_metrics(tmp_path: Path) -> None:
    env = {"SPEC_SIDECAR_TAP_ESTIMATE_FROM_CHUNKS": "true", "SPEC_SIDECAR_SCRAPE_INTERVAL": "0.5"}
    with running_upstream(per_request_metrics=False) as plain, tap_server(tmp_path, plain.url, **env) as server:
        wait_until(lambda: _scraped_k(server), 10, server.log)
        request = body(COMPLETIONS, stream=True, temperature=0, max_tokens=30)
        direct = httpx.post(plain.url + COMPLETIONS, json=request).content
        assert httpx.post(server.url + COMPLETIONS, json=request).content == direct
        source = {"source": "chunk_estimate"}
        assert bucket_value(server, "specdecode_tapped_requests_total", "0", **source) == 1
        # The stand-in emits one event per engine step (1 + accepted tokens after the prefill token).
        events = [e for e in direct.split(b"\n\n") if e.startswith(b"data: {")]
        tokens = 30
        assert bucket_value(server, "specdecode_request_accepted_tokens_total", "0") == tokens - len(events)
        assert bucket_value(server, "specdecode_request_draft_tokens_total", "0") == (len(events) - 1) * 4


def _scraped_k(server: TapServer) -> bool:
    body = httpx.get(server.url + "/metrics", timeout=2).text
    return "specdecode_num_speculative_tokens" in body


async def _soak_round(url: str, expected: dict[int, bytes], concurrency: int) -> list[int]:
    """Run `concurrency` streams at once; return the indexes whose bytes differ from the direct answer."""
    limits = httpx.Limits(max_connections=concurrency + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> int | None:
            request = body(CHAT if i % 2 else COMPLETIONS, stream=True, temperature=(i % 3) / 2, max_tokens=16 + i % 7)
            got = (await client.post(url + (CHAT if i % 2 else COMPLETIONS), json=request)).content
            return None if got == expected[i] else i

        results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    return [i for i in results if i is not None]


# Polls /healthz and /metrics from its own process (the test's event loop is busy driving the streams) until
# stdin closes, then prints the slowest answer in seconds.
POLLER = """
import sys, threading, time, httpx
url, slowest, done = sys.argv[1], [0.0], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
with httpx.Client(timeout=10) as client:
    while not done.is_set():
        for path in ("/healthz", "/metrics"):
            started = time.monotonic()
            assert client.get(url + path).status_code == 200, path
            slowest[0] = max(slowest[0], time.monotonic() - started)
        time.sleep(0.1)
print(slowest[0])
"""


def test_soak_200_concurrent_streams_lose_no_byte_keep_health_answering_and_memory_flat(
    upstream: TapUpstream, tap: TapServer
) -> None:
    concurrency, rounds = 200, 6
    expected = {}
    for i in range(concurrency):
        path = CHAT if i % 2 else COMPLETIONS
        request = body(path, stream=True, temperature=(i % 3) / 2, max_tokens=16 + i % 7)
        expected[i] = httpx.post(upstream.url + path, json=request).content
    upstream.step_rate = 25.0
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, tap.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    mismatches, rss = [], []
    try:
        for _ in range(rounds):
            mismatches.append(asyncio.run(_soak_round(tap.url, expected, concurrency)))
            rss.append(tap.rss_kib())
    finally:
        out, _ = poller.communicate("", timeout=30)
    assert mismatches == [[]] * rounds
    assert poller.returncode == 0, "/healthz or /metrics failed during the soak"
    assert float(out) < 1.0, f"/healthz or /metrics took {float(out):.2f}s under load"
    # The first round warms pools and caches; after it, memory must not keep growing round over round.
    growth_kib = rss[-1] - rss[1]
    assert growth_kib < 4 * 1024, f"RSS per round (KiB): {rss}"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("stream", "client_asked_usage"), [(True, False), (True, True), (False, False)])
def test_real_vllm_responses_reach_the_client_byte_for_byte(
    tmp_path: Path, path: str, stream: bool, client_asked_usage: bool
) -> None:
    recorded = load_recorded()
    assert recorded is not None, "captured vLLM responses missing under tests/fixtures/vllm"
    request = body(path, stream=stream, temperature=0)
    if client_asked_usage:
        request["stream_options"] = {"include_usage": True}
    with running_upstream(recorded=recorded) as real, tap_server(tmp_path, real.url) as server:
        direct = httpx.post(real.url + path, json=request)
        relayed = httpx.post(server.url + path, json=request)
        assert relayed.content == direct.content
        assert real.seen.requests[-1].get("stream_options") == ({"include_usage": True} if stream else None)
        source = {"source": "per_request_metrics"}
        assert bucket_value(server, "specdecode_tapped_requests_total", "0", **source) == 1
