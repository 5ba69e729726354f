"""A small vLLM stand-in whose /metrics counters move with the completions it serves, over real HTTP.

Completions stream in vLLM 0.32's shape (tests/support/tap_upstream.py: token events, then with
``stream_options.include_usage`` a usage-only chunk carrying ``metrics.speculative_decoding`` unless
``per_request_metrics`` is off). Every completion adds its draft and accepted tokens to the V1 spec-decode
counters on /metrics, so anything computed from per-request metrics and anything computed from /metrics deltas
can be checked against the same ground truth, kept per temperature in ``by_temperature``.

With ``latency=True`` /metrics also carries what a real engine writes about time and output: TTFT, time per
output token and end-to-end histograms (one observation per completion, spread so that P99 and P50 differ) and
``vllm:generation_tokens_total``, so the sidecar's latency and throughput families have numbers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http_stub import serve_http
from tests.support.payloads import vllm_payload
from tests.support.tap_upstream import MODEL, json_body, stream_events, synthesize


@dataclass
class FakeVllm:
    per_request_metrics: bool = True
    kv_cache_usage: float = 0.25
    lock: threading.Lock = field(default_factory=threading.Lock)
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    by_temperature: dict[float | None, list[int]] = field(default_factory=dict)  # -> [draft, accepted, requests]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    latency: bool = False
    # False: the engine as restarted without --speculative-config (no spec-decode series, no per-request
    # spec-decode metrics), as after a rollout that turned speculation off.
    speculation: bool = True
    completions: int = 0
    generation_tokens: int = 0
    # metric -> one observation per completion, in seconds
    observations: dict[str, list[float]] = field(default_factory=dict)
    # What vllm:num_requests_running reads (the batch size the engine runs at), set by the test to play a load.
    running: float = 0.0
    # With latency: speculation halves TPOT at up to 2 running requests and doubles it above (it pays at low load
    # and hurts at high load, as a compute-bound verify step does), so a load schedule has a cut at 2.
    load_effect: bool = False

    def metrics_text(self) -> str:
        with self.lock:
            if self.speculation:
                text = vllm_payload(MODEL, self.drafts, self.draft_tokens, self.accepted_tokens, (0, 0, 0, 0))
            else:
                text = vllm_payload(MODEL)
            running = f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}}'
            text = text.replace(f"{running} 0.0", f"{running} {self.running}")
            observed = {name: list(values) for name, values in self.observations.items()}
            generated = self.generation_tokens
        labels = f'engine="0",model_name="{MODEL}"'
        text += f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache_usage}\n"
        if self.latency:
            text += f"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{{{labels}}} {generated}\n"
            for name in LATENCY_HISTOGRAMS:
                text += _histogram(name, labels, observed.get(name, []))
        return text

    def count(self, body: dict[str, Any], spec: dict[str, Any]) -> None:
        with self.lock:
            self.drafts += spec["num_spec_steps"]
            self.draft_tokens += spec["num_draft_tokens"]
            self.accepted_tokens += spec["num_accepted_draft_tokens"]
            row = self.by_temperature.setdefault(body.get("temperature"), [0, 0, 0])
            row[0] += spec["num_draft_tokens"]
            row[1] += spec["num_accepted_draft_tokens"]
            row[2] += 1

    def observe(self, body: dict[str, Any]) -> None:
        """The completion's time and output, with or without speculation (only with ``latency=True``)."""
        if not self.latency:
            return
        with self.lock:
            self.completions += 1
            # Every tenth completion is slow, so the tail (P99) sits well above the median (P50).
            slow = 4.0 if self.completions % 10 == 0 else 1.0
            tokens = int(body.get("max_tokens") or 16)
            ttft, tpot = 0.05 * slow, 0.02 * slow
            if self.load_effect and self.speculation:
                tpot *= 0.5 if self.running <= 2 else 2.0
            self.generation_tokens += tokens
            for name, value in zip(LATENCY_HISTOGRAMS, (ttft, tpot, ttft + tpot * tokens), strict=True):
                self.observations.setdefault(name, []).append(value)


LATENCY_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
)
BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def _histogram(name: str, labels: str, values: list[float]) -> str:
    lines = [f"# TYPE {name} histogram"]
    for le in BUCKETS:
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {sum(v <= le for v in values)}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {len(values)}')
    lines.append(f"{name}_count{{{labels}}} {len(values)}")
    lines.append(f"{name}_sum{{{labels}}} {sum(values)}")
    return "\n".join(lines) + "\n"


@contextmanager
def fake_vllm(**kwargs: Any) -> Iterator[FakeVllm]:
    state = FakeVllm(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
            elif self.path == "/metrics":
                self._send(200, state.metrics_text().encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b'{"detail":"Not Found"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.bodies.append(body)
            if body.get("model") != MODEL:
                error = {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
                self._send(404, json.dumps(error).encode())
                return
            exchange = synthesize(body, chat=False)  # the engine's own counts, whether it shows them or not
            assert exchange.spec is not None
            state.observe(body)
            if state.speculation:
                state.count(body, exchange.spec)
            if not state.per_request_metrics or not state.speculation:
                exchange = synthesize(body, chat=False, per_request_metrics=False)
            if not body.get("stream"):
                self._send(200, json_body(exchange))
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
            for event in stream_events(exchange, include_usage=include_usage):
                self.wfile.write(event)
                self.wfile.flush()

        def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        state.url = url
        yield state
