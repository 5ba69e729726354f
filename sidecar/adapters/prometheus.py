"""Fleet mode's source of numbers: the Prometheus query API, summed over the Deployment's pods.

The only module that talks to Prometheus. One round of instant queries, all evaluated at the same time,
asks for the increase over the window of every engine family the catalog knows, summed per model
(``sum by (model_name) (increase(...[W]))``), and assembles the answers into one Snapshot of increases, so
that all the math stays in the pure core (``compute_stats``) exactly as for a local scrape.

Like the scrape adapter, everything that can go wrong becomes a FleetResult with a short reason label (a
metric label), never an exception: a round that fails in any query yields no Snapshot at all, because a
partial answer would read as zeros.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from sidecar.core.catalog import DIALECTS, Dialect, Role
from sidecar.core.snapshot import Counter, CounterKey, Histogram, HistogramKey, ModelSnapshot, Snapshot, detect_dialect

RESULTS = ("success", "empty", "timeout", "unreachable", "http_error", "bad_response")
# Gauges that stats reads (the others are not worth a query per round); requests running is the load the
# measured speedup matches windows by.
_GAUGE_ROLES = (Role.ACCEPT_RATE_GAUGE, Role.ACCEPT_LENGTH_GAUGE, Role.KV_CACHE_USAGE, Role.REQUESTS_RUNNING)


@dataclass(frozen=True)
class VectorSample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class FleetResult:
    result: str  # one of RESULTS
    snapshot: Snapshot | None  # increases over the window ending at snapshot.taken_at, summed per model
    duration_seconds: float
    detail: str = ""


class QueryError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- PromQL --------------------------------------------------------------------------------------------


def range_duration(seconds: float) -> str:
    """PromQL durations are integers with a unit: whole milliseconds keep sub-second windows exact."""
    return f"{max(round(seconds * 1000), 1)}ms"


def selector_braces(selector: str, name_regex: str | None = None) -> str:
    matchers = [f'__name__=~"{name_regex}"'] if name_regex else []
    matchers += [selector] if selector.strip() else []
    return "{" + ",".join(matchers) + "}"


def increase_query(sample: str, selector: str, window: float, by: Sequence[str]) -> str:
    return f"sum by ({', '.join(by)}) (increase({sample}{selector_braces(selector)}[{range_duration(window)}]))"


def gauge_query(name: str, selector: str, window: float) -> str:
    # One average per series (per pod and engine): the core averages or takes the max, as for a scrape.
    return f"avg_over_time({name}{selector_braces(selector)}[{range_duration(window)}])"


def dialect_query(selector: str, dialects: Sequence[Dialect] = DIALECTS) -> str:
    markers = sorted({m for d in dialects for m in d.markers})
    return f"group by (__name__) ({selector_braces(selector, '|'.join(markers))})"


# --- the Prometheus HTTP API -----------------------------------------------------------------------------


def parse_vector(body: bytes) -> tuple[VectorSample, ...]:
    """The JSON of /api/v1/query with an instant vector result → samples; anything else is a QueryError."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise QueryError("bad_response", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        raise QueryError("bad_response", f"status is not success: {error or str(doc)[:200]}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise QueryError("bad_response", "expected data.resultType vector with a result list")
    return tuple(_vector_sample(item) for item in data["result"])


def _vector_sample(item: object) -> VectorSample:
    try:
        assert isinstance(item, dict)
        labels = item["metric"]
        _, raw = item["value"]
        assert isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        return VectorSample(labels, float(raw))
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise QueryError("bad_response", f"malformed sample {str(item)[:200]}") from exc


async def instant_query(
    client: httpx.AsyncClient, base_url: str, promql: str, *, at: float, timeout: float
) -> tuple[VectorSample, ...]:
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        response = await client.post(url, data={"query": promql, "time": f"{at:.3f}"}, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise QueryError("timeout", type(exc).__name__) from exc
    except httpx.HTTPError as exc:
        raise QueryError("unreachable", f"{type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise QueryError("http_error", f"HTTP {response.status_code}: {response.text[:200]}")
    return parse_vector(response.content)


# --- one round -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetQuery:
    base_url: str
    selector: str  # PromQL label matchers without braces, e.g. namespace="ml",pod=~"llm-[a-z0-9]+-[a-z0-9]+"
    window: float
    timeout: float


async def query_fleet(client: httpx.AsyncClient, query: FleetQuery, at: float) -> FleetResult:
    started = time.monotonic()
    try:
        snapshot = await _fleet_snapshot(client, query, at)
    except QueryError as exc:
        return FleetResult(exc.reason, None, time.monotonic() - started, exc.detail)
    if snapshot is None or not snapshot.models:
        detail = f"no engine series for {{{query.selector}}} in the last {query.window:g}s"
        return FleetResult("empty", None, time.monotonic() - started, detail)
    return FleetResult("success", snapshot, time.monotonic() - started)


async def _fleet_snapshot(client: httpx.AsyncClient, query: FleetQuery, at: float) -> Snapshot | None:
    async def ask(promql: str) -> tuple[VectorSample, ...]:
        return await instant_query(client, query.base_url, promql, at=at, timeout=query.timeout)

    names = {s.labels.get("__name__", "") for s in await ask(dialect_query(query.selector))}
    dialect = detect_dialect(names)
    if dialect is None:
        return None
    plan = _plan(dialect, query)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = {key: group.create_task(ask(promql)) for key, promql in plan.items()}
    except* QueryError as errors:  # the first failure speaks for the round
        raise errors.exceptions[0] from None
    answers = {key: task.result() for key, task in tasks.items()}
    return assemble(dialect, answers, taken_at=at)


PlanKey = tuple[str, str, str]  # kind (counter, gauge, histogram), role or latency metric, family or name


def _plan(dialect: Dialect, query: FleetQuery) -> dict[PlanKey, str]:
    model = dialect.model_label
    plan: dict[PlanKey, str] = {}
    for role, family in dialect.counters.items():
        by = (model, dialect.position_label) if role is Role.ACCEPTED_PER_POS else (model,)
        plan[("counter", role, family)] = increase_query(family + "_total", query.selector, query.window, by)
    for role in _GAUGE_ROLES:
        for name in dialect.gauges.get(role, ()):
            plan[("gauge", role, name)] = gauge_query(name, query.selector, query.window)
    for metric, families in dialect.histograms.items():
        for family in families:
            plan[("histogram", metric, family)] = increase_query(
                family + "_bucket", query.selector, query.window, (model, "le")
            )
            # The exact mean needs the sum: vLLM's first TPOT bucket (10 ms) holds every token of a fast engine.
            plan[("histogram_sum", metric, family)] = increase_query(
                family + "_sum", query.selector, query.window, (model,)
            )
    return plan


def assemble(dialect: Dialect, answers: Mapping[PlanKey, Sequence[VectorSample]], *, taken_at: float) -> Snapshot:
    """Query answers → one Snapshot whose counters and buckets are the fleet's increases over the window.

    Series are summed away by the queries, so each model has one series (no engine labels). Where a
    dialect lists several spellings of one gauge or histogram (renamed metrics), the first with data wins,
    as in a scrape. Absent answers stay absent: speculation off has no spec-decode series, never zeros.
    """
    model_label = dialect.model_label
    counters: dict[str, dict[CounterKey, Counter]] = defaultdict(dict)
    gauges: dict[str, dict[Role, list[float]]] = defaultdict(lambda: defaultdict(list))
    bounds: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    sums: dict[str, dict[str, float]] = defaultdict(dict)
    taken: set[tuple[str, str]] = set()  # (kind, role or metric) already answered by an earlier spelling
    for (kind, what, _name), samples in answers.items():
        if not samples or (kind, what) in taken:
            continue
        taken.add((kind, what))
        for s in samples:
            model = s.labels.get(model_label, "")
            if kind == "counter":
                position = s.labels.get(dialect.position_label, "") if what == Role.ACCEPTED_PER_POS else ""
                counters[model][(Role(what), (), position)] = Counter(s.value)
            elif kind == "gauge":
                gauges[model][Role(what)].append(s.value)
            elif kind == "histogram_sum":
                sums[model][what] = s.value
            elif (bound := _bound(s.labels.get("le", ""))) is not None:
                bounds[model][what][bound] = s.value
    histograms = {model: _histograms(by_metric, sums.get(model, {})) for model, by_metric in bounds.items()}
    models = sorted(set(counters) | set(gauges) | set(histograms))
    return Snapshot(
        dialect,
        {
            m: ModelSnapshot(
                m,
                counters.get(m, {}),
                {role: tuple(values) for role, values in gauges.get(m, {}).items()},
                histograms.get(m, {}),
            )
            for m in models
        },
        taken_at,
    )


def _histograms(
    by_metric: Mapping[str, Mapping[float, float]], sums: Mapping[str, float]
) -> dict[HistogramKey, Histogram]:
    out: dict[HistogramKey, Histogram] = {}
    for metric, counts in by_metric.items():
        ordered = tuple(sorted(counts.items()))
        count = ordered[-1][1] if ordered and ordered[-1][0] == math.inf else 0.0
        out[(metric, ())] = Histogram(ordered, count, sum=sums.get(metric))
    return out


def _bound(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None
