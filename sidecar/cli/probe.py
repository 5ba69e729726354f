"""`spec-sidecar probe`: measure acceptance, TTFT and TPOT per temperature, before deciding on speculation.

For each temperature, one after another, it streams N completions to a vLLM OpenAI endpoint (C at a time) and
takes acceptance from each response's ``metrics.speculative_decoding`` (vLLM started with
``--per-request-spec-decode-metrics summary``). When the engine does not return it, it falls back to the increase
of the engine's /metrics counters across the temperature's run, which is why temperatures never overlap (and why
other traffic on the engine at the same time pollutes that fallback). TTFT and TPOT come from the stream itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sidecar.cli.terminal_text import VERDICT_STYLE, plain
from sidecar.core.figures import count
from sidecar.core.request_acceptance import SpecCounts, facts_from_payload
from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, compute_stats
from sidecar.core.verdict import Thresholds, Verdict, verdict
from sidecar.scrape.fetch import scrape
from sidecar.settings import check_url

SOURCE_PER_REQUEST = "per-request"
SOURCE_METRICS_DELTA = "metrics-delta"
SOURCE_NONE = "none"

DEFAULT_PROMPTS = (
    "Write a short Python function that returns the n-th Fibonacci number, with a docstring.",
    "Explain in three sentences why the sky is blue.",
    "List the first ten prime numbers, separated by commas.",
    "Summarize the plot of a heist movie in one paragraph.",
    "Translate 'good morning, how are you?' into French, Spanish and German.",
    "Write a haiku about a lighthouse in winter.",
)
SCRAPE_TIMEOUT = 10.0
SCRAPE_MAX_BYTES = 32 * 1024 * 1024


class ProbeError(Exception):
    """Something the user must fix (unreachable engine, a rejected request): one line, exit code 2."""


@dataclass(frozen=True)
class ProbePlan:
    base_url: str
    temperatures: tuple[float, ...]
    requests: int
    concurrency: int
    prompts: tuple[str, ...]
    max_tokens: int
    model: str | None
    thresholds: Thresholds
    timeout: float
    ignore_eos: bool = False


@dataclass(frozen=True)
class RequestResult:
    ttft: float | None
    tpot: float | None
    completion_tokens: int | None
    spec: SpecCounts | None


@dataclass(frozen=True)
class TemperatureResult:
    temperature: float
    requests: int
    draft_tokens: float | None
    accepted_tokens: float | None
    acceptance_ratio: float | None
    ttft_seconds: float | None  # median over the requests
    tpot_seconds: float | None  # median over the requests
    verdict: Verdict
    source: str

    def as_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "requests": self.requests,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_ratio": self.acceptance_ratio,
            "ttft_seconds": self.ttft_seconds,
            "tpot_seconds": self.tpot_seconds,
            "verdict": self.verdict.value,
        }


# --- the pure part: results of one temperature → its row -----------------------------------------------------


def summarize(
    temperature: float,
    results: Sequence[RequestResult],
    delta: tuple[float | None, float | None] | None,
    thresholds: Thresholds,
) -> TemperatureResult:
    """Per-request counts when every request carried them; else the /metrics delta (draft, accepted); else none."""
    draft: float | None
    accepted: float | None
    if results and all(r.spec is not None for r in results):
        draft = float(sum(r.spec.draft_tokens for r in results if r.spec))
        accepted = float(sum(r.spec.accepted_tokens for r in results if r.spec))
        source = SOURCE_PER_REQUEST
    elif delta is not None and delta[0] is not None:
        draft, accepted = delta
        source = SOURCE_METRICS_DELTA
    else:
        draft = accepted = None
        source = SOURCE_NONE
    ratio = accepted / draft if draft and accepted is not None else None
    return TemperatureResult(
        temperature=temperature,
        requests=len(results),
        draft_tokens=draft,
        accepted_tokens=accepted,
        acceptance_ratio=ratio,
        ttft_seconds=_median(r.ttft for r in results),
        tpot_seconds=_median(r.tpot for r in results),
        verdict=verdict(ratio, draft, draft is not None, thresholds),
        source=source,
    )


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return median(known) if known else None


def metrics_delta(before: Snapshot | None, after: Snapshot | None, model: str) -> tuple[float | None, float | None]:
    """Draft and accepted tokens the engine counted between two scrapes, for the probed model."""
    if before is None or after is None:
        return (None, None)
    stats = compute_stats([before, after], AnalysisConfig())
    found = stats.model(model) or (stats.models[0] if len(stats.models) == 1 else None)
    if found is None or not found.speculation:
        return (None, None)
    return (found.draft_tokens, found.accepted_tokens)


# --- HTTP ------------------------------------------------------------------------------------------------


def api_base(url: str) -> str:
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def discover_model(client: httpx.AsyncClient, base: str, timeout: float) -> str:
    body = await _get_json(client, f"{base}/v1/models", timeout)
    data = body.get("data") if isinstance(body, dict) else None
    ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    names = [i for i in ids if isinstance(i, str)]
    if not names:
        raise ProbeError(f"{base}/v1/models lists no model; pass --model")
    return names[0]


async def _get_json(client: httpx.AsyncClient, url: str, timeout: float) -> Any:
    try:
        response = await client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProbeError(f"cannot reach {url}: {_describe(exc)}") from exc
    if response.status_code >= 400:
        raise ProbeError(f"GET {url} → HTTP {response.status_code}: {_error_message(response.content)}")
    try:
        return response.json()
    except ValueError as exc:
        raise ProbeError(f"GET {url}: the answer is not JSON") from exc


async def stream_completion(
    client: httpx.AsyncClient, base: str, body: dict[str, Any], timeout: float
) -> RequestResult:
    url = f"{base}/v1/completions"
    started = time.monotonic()
    first = last = None
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", url, json=body, timeout=timeout) as response:
            if response.status_code >= 400:
                detail = _error_message(await response.aread())
                raise ProbeError(f"POST {url} → HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                payload = _event(line)
                if payload is None:
                    continue
                if _has_text(payload):
                    last = time.monotonic()
                    first = first if first is not None else last
                elif payload.get("choices") == [] and isinstance(payload.get("usage"), dict):
                    usage = payload
    except httpx.HTTPError as exc:
        raise ProbeError(f"POST {url} failed: {_describe(exc)}") from exc
    facts = facts_from_payload(usage)
    tokens = facts.completion_tokens
    ttft = first - started if first is not None else None
    tpot = (last - first) / (tokens - 1) if first is not None and last is not None and tokens and tokens > 1 else None
    return RequestResult(ttft, tpot, tokens, facts.spec)


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _has_text(payload: dict[str, Any]) -> bool:
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    return bool(choices[0].get("text"))


def _error_message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body.strip() else "(empty body)"
    if isinstance(parsed, dict):
        error = parsed.get("error")
        for candidate in (
            error.get("message") if isinstance(error, dict) else error,
            parsed.get("message"),
            parsed.get("detail"),
        ):
            if isinstance(candidate, str) and candidate:
                return candidate.splitlines()[0][:200]
    return json.dumps(parsed)[:200]


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the sweep ---------------------------------------------------------------------------------------------


async def run_probe(
    plan: ProbePlan, on_request: Callable[[float], None] = lambda _t: None
) -> tuple[str, list[TemperatureResult]]:
    base = api_base(plan.base_url)
    async with httpx.AsyncClient() as client:
        model = plan.model or await discover_model(client, base, plan.timeout)
        rows = []
        for temperature in plan.temperatures:
            before = await scrape(client, base, SCRAPE_TIMEOUT, SCRAPE_MAX_BYTES)
            results = await _run_temperature(client, base, model, temperature, plan, on_request=on_request)
            after = await scrape(client, base, SCRAPE_TIMEOUT, SCRAPE_MAX_BYTES)
            delta = metrics_delta(before.snapshot, after.snapshot, model)
            rows.append(summarize(temperature, results, delta, plan.thresholds))
    return model, rows


async def _run_temperature(
    client: httpx.AsyncClient,
    base: str,
    model: str,
    temperature: float,
    plan: ProbePlan,
    *,
    on_request: Callable[[float], None],
) -> list[RequestResult]:
    queue = list(range(plan.requests))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            body = {
                "model": model,
                "prompt": plan.prompts[i % len(plan.prompts)],
                "max_tokens": plan.max_tokens,
                "temperature": temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if plan.ignore_eos:
                body["ignore_eos"] = True
            results.append(await stream_completion(client, base, body, plan.timeout))
            on_request(temperature)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(plan.concurrency, plan.requests)):
                group.create_task(worker())
    except* ProbeError as errors:
        raise errors.exceptions[0] from None
    return results


# --- the command --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "probe",
        help="Measure acceptance, TTFT and TPOT per temperature against a vLLM OpenAI endpoint.",
        description="Measure before you decide: for each temperature in turn, stream --requests completions "
        "(--concurrency at a time) to a vLLM server and print, per temperature, the acceptance ratio, the "
        "median TTFT and TPOT, and the verdict (keep from --keep-threshold, disable below --threshold). "
        "Acceptance comes from each response when vLLM runs with --per-request-spec-decode-metrics summary, "
        "else from its /metrics counters before and after each temperature, so other traffic on the engine "
        "at the same time skews it.",
    )
    p.add_argument("--url", required=True, help="Base URL of the vLLM server, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--temperatures",
        type=_temperatures,
        default=(0.0, 0.4, 0.8, 1.0),
        help="Comma-separated (default 0,0.4,0.8,1.0)",
    )
    p.add_argument("--requests", type=_positive_int, default=20, help="Requests per temperature (default 20)")
    p.add_argument("--concurrency", type=_positive_int, default=4, help="Requests in flight at once (default 4)")
    p.add_argument("--prompt-file", type=Path, help="Prompts, one per line (default: a few built-in prompts)")
    p.add_argument("--max-tokens", type=_positive_int, default=64, help="max_tokens per request (default 64)")
    p.add_argument("--model", help="Model to ask for (default: the first one /v1/models lists)")
    p.add_argument(
        "--ignore-eos",
        action="store_true",
        help="Ask vLLM to generate exactly --max-tokens per request (vLLM's ignore_eos extension)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="Seconds one request may take (default 120)")
    defaults = Thresholds()
    p.add_argument("--threshold", type=float, default=defaults.disable_below, help="Verdict disable below (0.5)")
    p.add_argument("--keep-threshold", type=float, default=defaults.keep_from, help="Verdict keep from (0.65)")
    p.add_argument(
        "--min-draft-tokens",
        type=float,
        default=defaults.min_draft_tokens,
        help="Draft tokens a temperature needs before any verdict (200)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="Print {'temperatures': [...]} instead of a table; ttft_seconds and tpot_seconds are medians over "
        "the temperature's requests, null when unknown.",
    )
    p.set_defaults(handler=cmd_probe)


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite numbers >= 0, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def cmd_probe(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
        show_progress = not args.json and sys.stderr.isatty()
        model, rows = _run_with_progress(plan, show_progress)
    except ProbeError as exc:
        print(f"spec-sidecar probe: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"temperatures": [r.as_json() for r in rows]}, indent=2))
    else:
        console = Console()
        # Piped output has no width; rich would then cut the table to 80 columns.
        render(model, plan.base_url, rows, console if console.is_terminal else Console(width=160))
    return 0


def _plan(args: argparse.Namespace) -> ProbePlan:
    prompts = DEFAULT_PROMPTS
    if args.prompt_file is not None:
        try:
            lines = args.prompt_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ProbeError(f"{args.prompt_file}: {exc.strerror or exc}") from exc
        prompts = tuple(line for line in lines if line.strip())
        if not prompts:
            raise ProbeError(f"{args.prompt_file}: no prompts in it (one per line)")
    try:
        check_url(args.url)
    except ValueError as exc:
        raise ProbeError(f"--url: {exc}") from exc
    if args.threshold > args.keep_threshold:
        raise ProbeError(
            f"--threshold ({args.threshold:g}) is above --keep-threshold ({args.keep_threshold:g}); "
            "set --threshold at or below --keep-threshold (acceptance between them is borderline)"
        )
    thresholds = Thresholds(args.threshold, args.keep_threshold, args.min_draft_tokens)
    return ProbePlan(
        args.url, args.temperatures, args.requests, args.concurrency, prompts, args.max_tokens, args.model,
        thresholds, args.timeout, args.ignore_eos,
    )  # fmt: skip


def _run_with_progress(plan: ProbePlan, show: bool) -> tuple[str, list[TemperatureResult]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("probing", total=plan.requests * len(plan.temperatures))

        def advance(temperature: float) -> None:
            progress.update(task, advance=1, description=f"temperature {temperature:g}")

        return asyncio.run(run_probe(plan, advance))


def render(model: str, url: str, rows: Sequence[TemperatureResult], console: Console) -> None:
    sources = {r.source for r in rows}
    one_source = len(sources) == 1
    caption = "TTFT and TPOT: medians over each temperature's requests"
    if one_source:
        caption += f"; acceptance source: {next(iter(sources))}"
    table = Table(
        title=plain(f"probe: {model} at {url}"), title_justify="left", caption=plain(caption), caption_justify="left"
    )
    # Short headers: the table fits an 80-column terminal.
    for column in ("temp", "reqs", "draft", "accepted", "ratio", "TTFT ms", "TPOT ms", "verdict"):
        table.add_column(column, justify="left" if column == "verdict" else "right", no_wrap=True)
    if not one_source:
        table.add_column("source", no_wrap=True)
    for r in rows:
        cells = [
            f"{r.temperature:g}",
            str(r.requests),
            count(r.draft_tokens),
            count(r.accepted_tokens),
            "—" if r.acceptance_ratio is None else f"{r.acceptance_ratio:.3f}",
            _ms(r.ttft_seconds),
            _ms(r.tpot_seconds),
            f"[{VERDICT_STYLE[r.verdict.value]}]{r.verdict.value}[/]",
        ]
        table.add_row(*cells, *([] if one_source else [plain(r.source)]))
    console.print(table)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f}"
