"""Drives OpenAI-style requests at a real engine and keeps what it says about each one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from tests.engine.provision import model_family
from tests.engine.server import Engine

Api = Literal["completions", "chat"]
PROMETHEUS_TEXT = "text/plain; version=0.0.4"
OPENMETRICS_TEXT = "application/openmetrics-text; version=1.0.0"
REQUEST_TIMEOUT_SECONDS = 120.0


def fetch_metrics(url: str, accept: str = PROMETHEUS_TEXT) -> str:
    response = httpx.get(f"{url}/metrics", headers={"Accept": accept}, timeout=30.0)
    response.raise_for_status()
    return response.text


def default_prompts() -> list[str]:
    """One-line code prompts the family never trained on (docs/model-family.md)."""
    prompts: list[str] = json.loads((model_family() / "prompts.json").read_text())
    return prompts


@dataclass(frozen=True)
class Request:
    prompt: str
    temperature: float
    api: Api = "completions"
    max_tokens: int = 48
    seed: int = 0
    stream: bool = False
    include_usage: bool = True  # streaming only: per-request metrics ride on the final usage chunk

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    def body(self, model: str) -> dict[str, Any]:
        # ignore_eos: every request generates exactly max_tokens, so workloads have a known size.
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "ignore_eos": True,
            "stream": self.stream,
        }
        if self.stream and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        return body


@dataclass(frozen=True)
class RequestResult:
    request: Request
    status: int
    text: str
    completion_tokens: int | None
    spec: dict[str, Any] | None  # the response's `metrics.speculative_decoding`, if the engine sent it
    raw: bytes  # the body exactly as received (SSE bytes when streaming)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of an SSE body (`data: {...}` frames separated by blank lines), without `[DONE]`."""
    events = []
    for frame in raw.decode().split("\n\n"):
        data = "".join(line[len("data:") :].strip() for line in frame.splitlines() if line.startswith("data:"))
        if data and data != "[DONE]":
            events.append(json.loads(data))
    return events


def _text_of(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return str(choice["text"] or "")
    message = choice.get("message") or choice.get("delta") or {}
    return str(message.get("content") or "")


def _spec_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    metrics = payload.get("metrics") or {}
    spec = metrics.get("speculative_decoding")
    return spec if isinstance(spec, dict) else None


def send(client: httpx.Client, engine: Engine, request: Request) -> RequestResult:
    response = client.post(
        f"{engine.url}{request.path}", json=request.body(engine.model), timeout=REQUEST_TIMEOUT_SECONDS
    )
    raw = response.content
    if response.status_code != 200:
        return RequestResult(request, response.status_code, "", None, None, raw)
    payloads = parse_sse(raw) if request.stream else [response.json()]
    text = "".join(_text_of(c) for p in payloads for c in p.get("choices") or [])
    usage = next((p["usage"] for p in reversed(payloads) if p.get("usage")), None)
    spec = next((s for p in reversed(payloads) if (s := _spec_of(p)) is not None), None)
    tokens = None if usage is None else int(usage["completion_tokens"])
    return RequestResult(request, 200, text, tokens, spec, raw)


def run_workload(
    engine: Engine,
    n: int,
    temperature: float,
    *,
    api: Api = "completions",
    stream: bool = False,
    include_usage: bool = True,
    max_tokens: int = 48,
    prompts: Sequence[str] | None = None,
    concurrency: int = 4,
) -> list[RequestResult]:
    """n requests (prompt i and seed i for request i), `concurrency` at a time; results in request order."""
    pool = list(prompts or default_prompts())
    requests = [Request(pool[i % len(pool)], temperature, api, max_tokens, i, stream, include_usage) for i in range(n)]
    with httpx.Client() as client, ThreadPoolExecutor(max_workers=concurrency) as executor:
        return list(executor.map(lambda request: send(client, engine, request), requests))


def spec_totals(results: Sequence[RequestResult]) -> dict[str, int]:
    """Per-request draft/accepted token counts added up (requests without spec metrics add nothing)."""
    specs = [r.spec for r in results if r.spec is not None]
    return {
        "requests_with_spec": len(specs),
        "num_draft_tokens": sum(int(s["num_draft_tokens"]) for s in specs),
        "num_accepted_draft_tokens": sum(int(s["num_accepted_draft_tokens"]) for s in specs),
        "num_spec_steps": sum(int(s["num_spec_steps"]) for s in specs),
    }
