"""GET an engine's /metrics with bounded time and size, and parse it into a Snapshot.

Everything that can go wrong becomes a ScrapeResult with a short reason label (it is a metric label), never
an exception: the scrape loop must keep running whatever the engine does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.snapshot import Snapshot, build_snapshot

# The classic text format: with an OpenMetrics Accept header prometheus_client may rename colon names.
ACCEPT = "text/plain; version=0.0.4; charset=utf-8"

_WANTED = wanted_sample_names()
PARSER = SampleParser(_WANTED, openmetrics_aliases(_WANTED))


@dataclass(frozen=True)
class ScrapeResult:
    result: str  # success | timeout | unreachable | http_error | too_large | bad_payload
    snapshot: Snapshot | None
    duration_seconds: float
    bad_lines: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.snapshot is not None


# What to check after each kind of failed scrape, in the words of the flags a user can change.
_HINTS = {
    "http_error": "is it a vLLM engine? give its base URL, the one that serves /v1 and /metrics",
    "unreachable": "is the engine running, and is the address right?",
    "timeout": "the engine did not answer in time: check it, or raise --scrape-timeout",
    "too_large": "raise --scrape-max-bytes",
    "bad_payload": "is it a vLLM engine (or SGLang, llama.cpp, TensorRT-LLM)?",
}


def describe_failure(base_url: str, result: ScrapeResult) -> str:
    """One line for a person: the URL tried, what came back, and what to check."""
    hint = _HINTS.get(result.result, "")
    # An HTTP status or a size says it all; an exception's name and text need the word for what happened.
    what = result.detail if result.result in ("http_error", "too_large", "bad_payload") else None
    what = what or (f"{result.result} ({result.detail})" if result.detail else result.result)
    return f"GET {metrics_url(base_url)}: {what}" + (f"; {hint}" if hint else "")


def metrics_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def parse_payload(text: str, taken_at: float | None) -> tuple[Snapshot, int, tuple[str, ...]]:
    parsed = PARSER.parse(text)
    return build_snapshot(parsed.samples, taken_at), parsed.bad_lines, parsed.bad_examples


async def scrape(client: httpx.AsyncClient, base_url: str, timeout: float, max_bytes: int) -> ScrapeResult:
    started = time.monotonic()
    try:
        async with client.stream("GET", metrics_url(base_url), headers={"Accept": ACCEPT}, timeout=timeout) as response:
            if response.status_code != 200:
                return _failed("http_error", started, f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                return _failed("too_large", started, f"{declared} bytes > {max_bytes}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    return _failed("too_large", started, f"more than {max_bytes} bytes")
    except httpx.TimeoutException as exc:
        return _failed("timeout", started, type(exc).__name__)
    except httpx.HTTPError as exc:
        return _failed("unreachable", started, f"{type(exc).__name__}: {exc}")
    return _parsed(bytes(body), started)


def scrape_sync(base_url: str, timeout: float, max_bytes: int) -> ScrapeResult:
    """The same for one-shot commands (report, probe) that have no event loop of their own."""

    async def once() -> ScrapeResult:
        async with httpx.AsyncClient() as client:
            return await scrape(client, base_url, timeout, max_bytes)

    return asyncio.run(once())


def _parsed(body: bytes, started: float) -> ScrapeResult:
    text = body.decode("utf-8", errors="replace")
    snapshot, bad, examples = parse_payload(text, time.time())
    duration = time.monotonic() - started
    if snapshot.dialect is None:
        detail = "no known engine metrics in the payload"
        return ScrapeResult("bad_payload", None, duration, bad, detail)
    return ScrapeResult("success", snapshot, duration, bad, "; ".join(examples))


def _failed(result: str, started: float, detail: str) -> ScrapeResult:
    return ScrapeResult(result, None, time.monotonic() - started, 0, detail)
