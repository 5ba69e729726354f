"""Engines whose /metrics misbehaves on purpose, over real HTTP on 127.0.0.1 (stdlib server in a thread).

The bodies are the worst inputs of issue #11 (a big or slow scrape must not starve the sidecar): one huge escaped
label value, tens of MB of valid histogram series, a new label name at every scrape, tens of thousands of model
names, and a target that trickles its body a byte at a time. The tests in tests/integration/scrape/test_scrape_bounds.py
and benchmarks/scrape_stress.py serve them to the real sidecar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.http_stub import serve_http
from tests.support.payloads import vllm_payload

MB = 1024 * 1024
# vLLM 0.32's TTFT buckets (the default ones; 21 bounds plus +Inf).
_BOUNDS = (
    "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0",
    "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0", "+Inf",
)  # fmt: skip
_LATENCY = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
)


def _spec(model: str = "tiny", engine: str = "0", scrape: int = 0) -> str:
    # Counters that move with the scrape number, so every window has an acceptance ratio of 0.75.
    return vllm_payload(model, 100.0 * scrape, 400.0 * scrape, 300.0 * scrape, (), engine)


def _pad(text: str, total: int) -> str:
    """Fill up to ``total`` bytes with a family the sidecar never reads (as an engine's process metrics are)."""
    line = 'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 12345.0\n'
    missing = max(0, total - len(text.encode()))
    return text + "# TYPE http_requests_total counter\n" + line * (missing // len(line))


def escaped_label_body(total_bytes: int = 30 * MB, value_bytes: int = 15 * MB) -> bytes:
    """A good engine payload, one sample whose model name is ``value_bytes`` long with an escape every 4
    characters, and padding up to ``total_bytes``."""
    value = ('ab\\"' * (value_bytes // 4))[:value_bytes]
    line = f'vllm:spec_decode_num_draft_tokens_total{{engine="1",model_name="{value}"}} 1.0\n'
    return _pad(_spec(scrape=1) + line, total_bytes).encode()


def histogram_body(target_bytes: int = 31 * MB, scrape: int = 1) -> bytes:
    """Valid vLLM histograms of one model over as many data-parallel engines as fit in ``target_bytes``."""
    per_engine = _engine_histograms("0", scrape)
    engines = max(1, target_bytes // len(per_engine.encode()))
    parts = [_spec(scrape=scrape)]
    for family in _LATENCY:
        parts.append(f"# TYPE {family} histogram\n")
        for e in range(engines):
            parts.append(_histogram(family, f'engine="{e}",model_name="tiny"', scrape))
    return "".join(parts).encode()


def _engine_histograms(engine: str, scrape: int) -> str:
    return "".join(_histogram(f, f'engine="{engine}",model_name="tiny"', scrape) for f in _LATENCY)


def _histogram(family: str, labels: str, scrape: int) -> str:
    lines = [f'{family}_bucket{{{labels},le="{le}"}} {float(scrape * (i + 1))}' for i, le in enumerate(_BOUNDS)]
    lines.append(f"{family}_count{{{labels}}} {float(scrape * len(_BOUNDS))}")
    lines.append(f"{family}_sum{{{labels}}} {scrape * 1.5}")
    return "\n".join(lines) + "\n"


def churn_body(scrape: int, engines: int = 400) -> bytes:
    """Spec counters and TTFT buckets whose label set gains a label name never seen before at every scrape."""
    parts = [_spec(scrape=scrape), "# TYPE vllm:time_to_first_token_seconds histogram\n"]
    for e in range(engines):
        labels = f'engine="{e}",model_name="tiny",churn_{scrape}="pod-{scrape}-{e}"'
        parts.append(_histogram("vllm:time_to_first_token_seconds", labels, scrape))
    return "".join(parts).encode()


def many_models_body(scrape: int, models: int = 20_001) -> bytes:
    """Spec counters for ``models`` model names (one per LoRA adapter gone wild)."""
    parts = []
    for m in range(models):
        labels = f'engine="0",model_name="model-{m}"'
        for name, value in (("drafts", 100), ("draft_tokens", 400), ("accepted_tokens", 300)):
            parts.append(f"vllm:spec_decode_num_{name}_total{{{labels}}} {float(value * scrape)}\n")
    return "".join(parts).encode()


def admitted_worst_body(scrape: int, engines: int = 8_000, label_chars: int = 1_000) -> bytes:
    """As much as the default bounds admit: 24,000 counter samples (3 per engine), each with about
    ``label_chars`` characters of label text that no earlier scrape had (nothing can be shared between
    snapshots), about 26 MB."""
    parts = []
    filler = "x" * (label_chars - 60)
    for e in range(engines):
        labels = f'engine="{e}",model_name="tiny",pod="{scrape}-{e}-{filler}"'
        for name, value in (("drafts", 100), ("draft_tokens", 400), ("accepted_tokens", 300)):
            parts.append(f"vllm:spec_decode_num_{name}_total{{{labels}}} {float(value * scrape)}\n")
    return "".join(parts).encode()


@dataclass
class HostileEngine:
    """Serves ``body(scrape_number)``; with ``trickle_seconds`` set, writes it one byte per that many seconds from
    scrape number ``trickle_from`` on (the ones before come whole, so the sidecar has a good window to lose)."""

    body: Callable[[int], bytes]
    trickle_seconds: float | None = None
    trickle_from: int = 1
    hits: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_body(self) -> tuple[bytes, float | None]:
        with self.lock:
            self.hits += 1
            n = self.hits
        return self.body(n), (self.trickle_seconds if n >= self.trickle_from else None)


@contextmanager
def hostile_engine(
    body: Callable[[int], bytes], trickle_seconds: float | None = None, trickle_from: int = 1
) -> Iterator[HostileEngine]:
    engine = HostileEngine(body, trickle_seconds, trickle_from)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload, trickle = engine.next_body()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if trickle is None:
                    self.wfile.write(payload)
                    return
                for i in range(len(payload)):
                    self.wfile.write(payload[i : i + 1])
                    self.wfile.flush()
                    time.sleep(trickle)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the scraper gave up: that is what a deadline is for

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        engine.url = url
        yield engine
