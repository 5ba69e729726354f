"""A small vLLM stand-in whose /metrics counters move with the completions it serves, over real HTTP.

Completions stream in vLLM 0.32's shape (tests/support/tap_upstream.py: token events, then with
``stream_options.include_usage`` a usage-only chunk carrying ``metrics.speculative_decoding`` unless
``per_request_metrics`` is off). Every completion adds its draft and accepted tokens to the V1 spec-decode
counters on /metrics, so anything computed from per-request metrics and anything computed from /metrics deltas
can be checked against the same ground truth, kept per temperature in ``by_temperature``.
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

    def metrics_text(self) -> str:
        with self.lock:
            text = vllm_payload(MODEL, self.drafts, self.draft_tokens, self.accepted_tokens, (0, 0, 0, 0))
        labels = f'engine="0",model_name="{MODEL}"'
        return (
            text
            + f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache_usage}\n"
        )

    def count(self, body: dict[str, Any], spec: dict[str, Any]) -> None:
        with self.lock:
            self.drafts += spec["num_spec_steps"]
            self.draft_tokens += spec["num_draft_tokens"]
            self.accepted_tokens += spec["num_accepted_draft_tokens"]
            row = self.by_temperature.setdefault(body.get("temperature"), [0, 0, 0])
            row[0] += spec["num_draft_tokens"]
            row[1] += spec["num_accepted_draft_tokens"]
            row[2] += 1


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
            state.count(body, exchange.spec)
            if not state.per_request_metrics:
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
