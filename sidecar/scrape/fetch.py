"""GET an engine's /metrics with bounded time and size, and parse it into a Snapshot.

Everything that can go wrong becomes a ScrapeResult with a short reason label (it is a metric label), never
an exception: the scrape loop must keep running whatever the engine does.

The whole GET, body included, runs under one deadline (a per-read timeout never fires on a target that sends a
byte every half second). ``fetch`` only reads the body; ``parsed`` turns it into a Snapshot. The running sidecar
parses in a process of its own (sidecar/scrape/worker.py), so a 30 MB body never holds the event loop that answers
/healthz, /metrics and the tap; one-shot commands (``scrape``) parse in a thread. What one parse may keep is
bounded by ScrapeBounds, and what was left out is counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import ParseLimits, SampleParser, collector_paused
from sidecar.core.snapshot import Snapshot, build_snapshot

# The classic text format: with an OpenMetrics Accept header prometheus_client may rename colon names.
ACCEPT = "text/plain; version=0.0.4; charset=utf-8"

_WANTED = wanted_sample_names()
PARSER = SampleParser(_WANTED, openmetrics_aliases(_WANTED))


@dataclass(frozen=True)
class ScrapeBounds:
    """What one scrape may keep (None: unbounded, for one-shot commands reading a file they were given)."""

    max_series: int | None = None
    max_label_bytes: int | None = None
    max_models: int | None = None


UNBOUNDED = ScrapeBounds()


@dataclass(frozen=True)
class ScrapeResult:
    # success | timeout | unreachable | http_error | too_large | too_many_series | bad_payload | parse_failed
    result: str
    snapshot: Snapshot | None
    duration_seconds: float
    bad_lines: int = 0
    detail: str = ""
    # What the bounds left out, by reason: label_bytes and series (sample lines), models (model names).
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        # Not ``snapshot is not None``: the parse worker hands back a success without its snapshot (it stays in
        # the worker's window).
        return self.result == "success"


# What to check after each kind of failed scrape, in the words of the flags a user can change.
_HINTS = {
    "http_error": "is it a vLLM engine? give its base URL, the one that serves /v1 and /metrics",
    "unreachable": "is the engine running, and is the address right?",
    "timeout": "the engine did not answer in time: check it, or raise --scrape-timeout",
    "too_large": "raise --scrape-max-bytes",
    "too_many_series": "raise --scrape-max-series, and the memory limit with it (docs/benchmarks.md)",
    "bad_payload": "is it a vLLM engine (or SGLang, llama.cpp, TensorRT-LLM)?",
    "parse_failed": "the sidecar's parse worker was restarted (see specdecode_parse_worker_restarts_total); raise "
    "--scrape-parse-timeout or the memory limit, or lower the --scrape-max-* bounds",
}


def describe_failure(base_url: str, result: ScrapeResult) -> str:
    """One line for a person: the URL tried, what came back, and what to check."""
    hint = _HINTS.get(result.result, "")
    # An HTTP status or a size says it all; an exception's name and text need the word for what happened.
    said = ("http_error", "too_large", "too_many_series", "bad_payload", "parse_failed")
    what = result.detail if result.result in said else None
    what = what or (f"{result.result} ({result.detail})" if result.detail else result.result)
    return f"GET {metrics_url(base_url)}: {what}" + (f"; {hint}" if hint else "")


def metrics_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def parse_payload(
    text: str | bytes | bytearray, taken_at: float | None, bounds: ScrapeBounds = UNBOUNDED
) -> tuple[Snapshot, int, tuple[str, ...]]:
    snapshot, parsed_bad, examples, _dropped = _parse(text, taken_at, bounds)
    return snapshot, parsed_bad, examples


def _parse(
    text: str | bytes | bytearray, taken_at: float | None, bounds: ScrapeBounds
) -> tuple[Snapshot, int, tuple[str, ...], dict[str, int]]:
    # The collector stays off until the samples are gone: left on during the build, its first young pass walks
    # every sample of the parse (0.6 s for 380,000 samples, docs/benchmarks.md); freed by reference counting
    # first, they are never walked at all. What the snapshot keeps is untracked at the next young pass.
    with collector_paused():
        parsed = PARSER.parse(text, ParseLimits(bounds.max_series, bounds.max_label_bytes))
        snapshot = build_snapshot(parsed.samples, taken_at, bounds.max_models)
        dropped = dict(parsed.dropped)
        bad_lines, bad_examples = parsed.bad_lines, parsed.bad_examples
        del parsed
    if snapshot.dropped_models:
        dropped["models"] = snapshot.dropped_models
    return snapshot, bad_lines, bad_examples, dropped


async def scrape(
    client: httpx.AsyncClient, base_url: str, timeout: float, max_bytes: int, bounds: ScrapeBounds = UNBOUNDED
) -> ScrapeResult:
    """GET and parse (in a thread): for one-shot commands, where nothing else waits on the event loop."""
    started = time.monotonic()
    body = await fetch(client, base_url, timeout, max_bytes)
    if isinstance(body, ScrapeResult):
        return body
    return await asyncio.to_thread(parsed, body, started, time.time(), bounds)


async def fetch(client: httpx.AsyncClient, base_url: str, timeout: float, max_bytes: int) -> bytearray | ScrapeResult:
    """The body of a good answer, or the failed ScrapeResult; the whole GET runs under ``timeout``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            return await _get(client, base_url, timeout, max_bytes)
    except TimeoutError:
        return failed("timeout", started, f"the whole scrape took more than {timeout:g} s")
    except httpx.TimeoutException as exc:
        return failed("timeout", started, type(exc).__name__)
    except httpx.HTTPError as exc:
        return failed("unreachable", started, f"{type(exc).__name__}: {exc}")


async def _get(client: httpx.AsyncClient, base_url: str, timeout: float, max_bytes: int) -> bytearray | ScrapeResult:
    started = time.monotonic()
    async with client.stream("GET", metrics_url(base_url), headers={"Accept": ACCEPT}, timeout=timeout) as response:
        if response.status_code != 200:
            return failed("http_error", started, f"HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return failed("too_large", started, f"{declared} bytes > {max_bytes}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > max_bytes:
                return failed("too_large", started, f"more than {max_bytes} bytes")
    return body


def scrape_sync(base_url: str, timeout: float, max_bytes: int) -> ScrapeResult:
    """The same for one-shot commands (report, probe) that have no event loop of their own."""

    async def once() -> ScrapeResult:
        async with httpx.AsyncClient() as client:
            return await scrape(client, base_url, timeout, max_bytes)

    return asyncio.run(once())


def parsed(body: bytes | bytearray, started: float, received_at: float, bounds: ScrapeBounds) -> ScrapeResult:
    """The body as a Snapshot, or why not; ``started`` (time.monotonic()) is when the scrape began."""
    snapshot, bad, examples, dropped = _parse(body, received_at, bounds)
    duration = time.monotonic() - started
    if dropped.get("series"):
        detail = f"{dropped['series']} samples > --scrape-max-series {bounds.max_series}"
        return ScrapeResult("too_many_series", None, duration, bad, detail, dropped)
    if snapshot.dialect is None:
        detail = "no known engine metrics in the payload"
        return ScrapeResult("bad_payload", None, duration, bad, detail, dropped)
    return ScrapeResult("success", snapshot, duration, bad, "; ".join(examples), dropped)


def failed(result: str, started: float, detail: str) -> ScrapeResult:
    return ScrapeResult(result, None, time.monotonic() - started, 0, detail)
