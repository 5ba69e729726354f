"""Samples of one scrape → a Snapshot: per model, per engine series, the values the analysis needs.

Series are kept per engine (every label but the model, ``le`` and ``position``) rather than summed here,
because a data-parallel engine can restart on its own: resets must be found per series before summing,
as PromQL's ``sum(increase(...))`` does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.catalog import DIALECTS, Dialect, Role
from sidecar.core.exposition import Labels, Sample

SeriesId = Labels
_NOT_SERIES = frozenset({"le", "position", "quantile"})


@dataclass(frozen=True, slots=True)
class Counter:
    value: float
    created: float | None = None


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative buckets as exposed: (upper bound, count), sorted by bound."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    created: float | None = None
    # The ``_count`` sample as exposed (None when absent): checked against the +Inf bucket, never used as count.
    count_sample: float | None = None
    # The ``_sum`` sample (None when absent): with the count it gives the exact mean, which the buckets cannot when
    # the observations sit in one bucket (vLLM's first TPOT bucket holds everything under 10 ms: a CPU's TPOT).
    sum: float | None = None


CounterKey = tuple[Role, SeriesId, str]  # role, engine series, position ("" when not positional)
HistogramKey = tuple[str, SeriesId]  # latency metric (ttft, tpot, itl, e2e), engine series

_ROLES = {role.value: role for role in Role}


class CounterTable(Mapping[CounterKey, Counter]):
    """One model's counters, kept as plain tuples of strings and floats; read as ``Counter`` objects.

    Why not a dict of ``Counter``: the window holds 13 snapshots of up to tens of thousands of counters, and
    CPython's cyclic collector walks every object it tracks at each full pass (100-140 ms per pass at the default
    bounds' worst case, a stalled event loop meanwhile: docs/benchmarks.md, "The slowest probes"). It stops
    tracking an exact tuple whose items are strings, floats and such tuples, never a dataclass, and never a tuple
    holding a ``Role`` member. So rows are exact tuples keyed by the role's text, untracked after the first young
    pass; a lookup with a ``Role`` key still finds them (a ``StrEnum`` member hashes and compares as its text).
    """

    __slots__ = ("_rows",)

    def __init__(self, counters: Mapping[CounterKey, Counter] | None = None) -> None:
        self._rows: dict[tuple[str, SeriesId, str], tuple[float, float | None]] = {}
        for key, counter in (counters or {}).items():
            self.put(key, counter.value, counter.created)

    def put(self, key: CounterKey, value: float, created: float | None = None) -> None:
        role, series, position = key
        self._rows[(str(role.value), series, position)] = (value, created)

    def __getitem__(self, key: CounterKey) -> Counter:
        value, created = self._rows[key]
        return Counter(value, created)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[CounterKey]:
        for role, series, position in self._rows:
            yield _ROLES[role], series, position

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"CounterTable({dict(self.items())!r})"


class HistogramTable(Mapping[HistogramKey, Histogram]):
    """One model's histograms as exact tuples, read as ``Histogram`` objects: why, see ``CounterTable``."""

    __slots__ = ("_rows",)

    def __init__(self, histograms: Mapping[HistogramKey, Histogram] | None = None) -> None:
        self._rows: dict[
            HistogramKey, tuple[tuple[tuple[float, float], ...], float, float | None, float | None, float | None]
        ]
        self._rows = {}
        for key, h in (histograms or {}).items():
            self._rows[key] = (h.buckets, h.count, h.created, h.count_sample, h.sum)

    def __getitem__(self, key: HistogramKey) -> Histogram:
        return Histogram(*self._rows[key])

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[HistogramKey]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"HistogramTable({dict(self.items())!r})"


@dataclass(frozen=True)
class ModelSnapshot:
    model_name: str
    counters: Mapping[CounterKey, Counter] = field(default_factory=dict)
    gauges: Mapping[Role, tuple[float, ...]] = field(default_factory=dict)
    histograms: Mapping[HistogramKey, Histogram] = field(default_factory=dict)
    # What the core derives from this snapshot alone, kept once computed: a window sees each of its snapshots
    # again at every scrape (sidecar.core.stats keeps its validity check here). Not part of equality.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Whatever mapping a caller gives, the snapshot keeps the untracked form (see CounterTable).
        if not isinstance(self.counters, CounterTable):
            object.__setattr__(self, "counters", CounterTable(self.counters))
        if not isinstance(self.histograms, HistogramTable):
            object.__setattr__(self, "histograms", HistogramTable(self.histograms))

    @property
    def speculation(self) -> bool:
        """Spec-decode counters exist only while speculation is configured (absent, not zero, when off).

        SGLang registers its spec gauges either way and writes 0 with speculation off. An accept length counts
        the bonus token, so it is >= 1 for any step that ran with speculation: above 0 means on.
        """
        if any(key[0] is Role.DRAFT_TOKENS for key in self.counters):
            return True
        lengths = self.gauges.get(Role.ACCEPT_LENGTH_GAUGE)
        if lengths is not None:
            return any(v > 0 for v in lengths)
        return Role.ACCEPT_RATE_GAUGE in self.gauges


@dataclass(frozen=True)
class Snapshot:
    dialect: Dialect | None
    models: Mapping[str, ModelSnapshot]
    taken_at: float | None = None
    duplicate_samples: int = 0
    dropped_models: int = 0  # model names beyond build_snapshot's max_models, left out of ``models``

    @property
    def engine(self) -> str | None:
        return self.dialect.engine if self.dialect else None


def detect_dialect(names: set[str], dialects: tuple[Dialect, ...] = DIALECTS) -> Dialect | None:
    for dialect in dialects:
        if any(marker in names for marker in dialect.markers):
            return dialect
    return None


def build_snapshot(samples: Iterable[Sample], taken_at: float | None = None, max_models: int | None = None) -> Snapshot:
    """``max_models`` bounds the models kept (the first ones by name, so the same ones at every scrape of the
    same engine); each kept model is whole, the others are left out and counted."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_name[s.name].append(s)
    dialect = detect_dialect(set(by_name))
    if dialect is None:
        return Snapshot(None, {}, taken_at)
    dropped = 0
    if max_models is not None:
        by_name, dropped = _first_models(by_name, dialect.model_label, max_models)
    builder = _Builder(dialect, by_name)
    return Snapshot(dialect, builder.models(), taken_at, builder.duplicates, dropped)


def _first_models(
    by_name: dict[str, list[Sample]], model_label: str, max_models: int
) -> tuple[dict[str, list[Sample]], int]:
    """Only the samples of the first ``max_models`` model names; and how many names were left out. Done before
    anything is built per model: 20,000 models' structures made only to be dropped cost a collector pause."""
    names = {s.label(model_label) for samples in by_name.values() for s in samples}
    if len(names) <= max_models:
        return by_name, 0
    keep = set(sorted(names)[:max_models])
    kept = {name: [s for s in samples if s.label(model_label) in keep] for name, samples in by_name.items()}
    return kept, len(names) - max_models


class _Builder:
    def __init__(self, dialect: Dialect, by_name: Mapping[str, list[Sample]]) -> None:
        self.dialect = dialect
        self.by_name = by_name
        self.duplicates = 0
        self.counters: dict[str, CounterTable] = defaultdict(CounterTable)
        self.gauges: dict[str, dict[Role, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.histograms: dict[str, dict[HistogramKey, Histogram]] = defaultdict(dict)

    def models(self) -> dict[str, ModelSnapshot]:
        for role, family in self.dialect.counters.items():
            self._counter(role, family)
        for role, names in self.dialect.gauges.items():
            self._gauge(role, names)
        for metric, families in self.dialect.histograms.items():
            self._histogram(metric, families)
        models = set(self.counters) | set(self.gauges) | set(self.histograms)
        return {
            m: ModelSnapshot(
                m,
                self.counters.get(m, CounterTable()),
                {r: tuple(v) for r, v in self.gauges.get(m, {}).items()},
                self.histograms.get(m, {}),
            )
            for m in sorted(models)
        }

    def _model_and_series(self, labels: Labels) -> tuple[str, SeriesId]:
        model = ""
        series: list[tuple[str, str]] = []
        for key, value in labels:
            if key == self.dialect.model_label:
                model = value
            elif key not in _NOT_SERIES:
                series.append((key, value))
        return model, tuple(series)

    def _created(self, family: str) -> dict[Labels, float]:
        return {s.labels: s.value for s in self.by_name.get(family + "_created", ())}

    def _counter(self, role: Role, family: str) -> None:
        created = self._created(family)
        for s in self.by_name.get(family + "_total", ()):
            model, series = self._model_and_series(s.labels)
            position = s.label(self.dialect.position_label) if role is Role.ACCEPTED_PER_POS else ""
            key = (role, series, position)
            if key in self.counters[model]:
                self.duplicates += 1
            self.counters[model].put(key, s.value, created.get(s.labels))

    def _gauge(self, role: Role, names: tuple[str, ...]) -> None:
        # The first spelling present wins (renamed metrics: newest name first).
        for name in names:
            found = self.by_name.get(name)
            if found:
                for s in found:
                    model, _ = self._model_and_series(s.labels)
                    self.gauges[model][role].append(s.value)
                return

    def _histogram(self, metric: str, families: tuple[str, ...]) -> None:
        for family in families:
            buckets = self.by_name.get(family + "_bucket")
            if buckets:
                self._collect_histogram(metric, family, buckets)
                return

    def _collect_histogram(self, metric: str, family: str, buckets: list[Sample]) -> None:
        grouped: dict[tuple[str, SeriesId], dict[float, float]] = defaultdict(dict)
        created_by_series: dict[tuple[str, SeriesId], float] = {}
        for s in buckets:
            bound = _parse_bound(s.label("le"))
            if bound is None:
                continue
            group = self._model_and_series(s.labels)
            if bound in grouped[group]:
                self.duplicates += 1
            grouped[group][bound] = s.value
        for s in self.by_name.get(family + "_created", ()):
            created_by_series[self._model_and_series(s.labels)] = s.value
        counts = {self._model_and_series(s.labels): s.value for s in self.by_name.get(family + "_count", ())}
        sums = {self._model_and_series(s.labels): s.value for s in self.by_name.get(family + "_sum", ())}
        for (model, series), bounds in grouped.items():
            ordered = tuple(sorted(bounds.items()))
            count = ordered[-1][1] if ordered and ordered[-1][0] == float("inf") else 0.0
            key = (model, series)
            self.histograms[model][(metric, series)] = Histogram(
                ordered, count, created_by_series.get(key), counts.get(key), sums.get(key)
            )


def _parse_bound(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None
