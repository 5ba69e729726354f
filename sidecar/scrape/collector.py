"""A prometheus-client Collector over the latest immutable View.

Metrics are built at collection time from the View, so a gauge that has no data this window is simply not
emitted (absent, not 0, and never stale). A View whose last good scrape is older than --stale-after is not
exported as current: target_up is 0 and the derived gauges go absent; the age itself is always exported.
docs/metrics.md lists every family; a test keeps the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core import load_schedule, right_size_k
from sidecar.core.baseline import divergence
from sidecar.core.load_schedule import SchedulePlan, ScheduleSource
from sidecar.core.measured_speedup import MeasuredSpeedup
from sidecar.core.stats import ModelStats
from sidecar.core.validity import INVALID_REASONS
from sidecar.scrape.monitor import View
from sidecar.scrape.worker import RESTART_REASONS

SCRAPE_RESULTS = (
    "success", "timeout", "unreachable", "http_error", "too_large", "too_many_series", "bad_payload", "parse_failed",
)  # fmt: skip
DROP_REASONS = ("label_bytes", "series", "models", "trend_points")
QUANTILE_LABELS = {"p50": "0.5", "p90": "0.9", "p95": "0.95", "p99": "0.99"}


# model -> the measured speedup to export for it (the pod's own, or in fleet mode the fleet's).
MeasuredFor = Callable[[str], MeasuredSpeedup | None]
# model -> the load schedule to export for it (sidecar.core.load_schedule), None with speculation off.
ScheduleFor = Callable[[ModelStats, MeasuredSpeedup | None], SchedulePlan | None]


class ScrapeCollector(Collector):
    def __init__(
        self,
        view: Callable[[], View],
        stale_after: float,
        measured: MeasuredFor | None = None,
        schedule: ScheduleFor | None = None,
    ) -> None:
        self._view = view
        self._stale_after = stale_after
        self._measured = measured
        self._schedule = schedule

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        current = view.current(self._stale_after)
        yield from _health(view, current)
        if current:
            measured = self._measured or view.measured
            # Without a sidecar to ask (tests of the collector alone): the pod's own windows, no --max-num-seqs.
            schedule = self._schedule or (
                lambda m, speed: load_schedule.for_model(view.speed.samples(m.model_name), m, speed)
            )
            yield from _model_families(view, measured, schedule)


def _health(view: View, current: bool) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "specdecode_target_up",
        "1 if the last scrape of the engine's /metrics succeeded and is not older than --stale-after.",
    )
    up.add_metric([], 1.0 if current else 0.0)
    yield up
    age = view.age()
    if age is not None:
        family = GaugeMetricFamily(
            "specdecode_last_scrape_age_seconds", "Seconds since the last successful scrape was taken in."
        )
        family.add_metric([], age)
        yield family
    yield _counts_by(
        "specdecode_dropped",
        "What the memory bounds left out, by reason: label_bytes, series (sample lines), models, trend_points.",
        "reason",
        DROP_REASONS,
        view.dropped,
    )
    if view.last_scrape is not None:
        duration = GaugeMetricFamily("specdecode_scrape_duration_seconds", "Duration of the last engine scrape.")
        duration.add_metric([], view.last_scrape.duration_seconds)
        yield duration
    yield _counts_by("specdecode_scrapes", "Engine scrapes by result.", "result", SCRAPE_RESULTS, view.scrapes)
    yield _counts_by(
        "specdecode_parse_worker_restarts",
        "Restarts of the process that parses scrapes, by reason: crashed (it died), timeout "
        "(over --scrape-parse-timeout).",
        "reason",
        RESTART_REASONS,
        view.parse_worker_restarts,
    )
    bad = CounterMetricFamily(
        "specdecode_scrape_bad_lines", "Lines of wanted metric families that could not be parsed."
    )
    bad.add_metric([], float(view.bad_lines_total))
    yield bad
    yield _counts_by(
        "specdecode_invalid_windows",
        "Windows (one per model per scrape) that held numbers no engine can produce, by reason; none is judged.",
        "reason",
        INVALID_REASONS,
        view.invalid_windows,
    )
    resets = CounterMetricFamily(
        "specdecode_counter_resets", "Engine series seen restarting (counters back to zero) between two scrapes."
    )
    resets.add_metric([], float(view.counter_resets))
    yield resets
    if view.last_success_at is not None:
        last = GaugeMetricFamily(
            "specdecode_last_scrape_success_timestamp_seconds", "Unix time of the last successful scrape."
        )
        last.add_metric([], view.last_success_at)
        yield last


class _Gauges:
    """Families keyed by name, created on first use so that families with no samples are never emitted."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is None or math.isnan(value):  # unknown: absent, never 0
            return
        family = self.families.get(name)
        if family is None:
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            self.families[name] = family
        family.add_metric(list(labels.values()), value)


def _model_families(view: View, measured: MeasuredFor, schedule: ScheduleFor) -> Iterator[Metric]:
    assert view.stats is not None
    gauges = _Gauges()
    if view.stats.window_seconds is not None:
        seconds = view.stats.window_seconds
        gauges.add("specdecode_window_seconds", "Length of the window the numbers cover.", {}, seconds)
    for model in view.stats.models:
        speed = measured(model.model_name)  # once: it pools every speed window of the model
        _model_gauges(gauges, model, view, speed)
        _schedule_gauges(gauges, model.model_name, schedule(model, speed))
    yield from gauges.families.values()


def _model_gauges(g: _Gauges, m: ModelStats, view: View, speed: MeasuredSpeedup | None) -> None:
    labels = {"model_name": m.model_name}
    g.add("specdecode_speculation_enabled", "1 if the engine runs with speculation.", labels, float(m.speculation))
    g.add("specdecode_acceptance_ratio", "Accepted / draft tokens over the window.", labels, m.acceptance_ratio)
    g.add(
        "specdecode_mean_acceptance_length",
        "1 + accepted / drafts: tokens per verify step, bonus token included.",
        labels,
        m.mean_acceptance_length,
    )
    g.add("specdecode_alpha_estimate", "Acceptance at draft position 0 (estimate of α).", labels, m.alpha_estimate)
    for position, rate in enumerate(m.position_acceptance):
        g.add(
            "specdecode_position_acceptance_ratio",
            "Accepted at a draft position / drafts.",
            {**labels, "position": str(position)},
            rate,
        )
    k = float(m.num_speculative_tokens) if m.num_speculative_tokens is not None else None
    g.add("specdecode_num_speculative_tokens", "k: draft tokens proposed per step.", labels, k)
    g.add("specdecode_window_draft_tokens", "Draft tokens proposed in the window.", labels, m.draft_tokens)
    g.add("specdecode_expected_speedup", "L / (1 + k*c): expected walltime speedup.", labels, m.expected_speedup)
    g.add(
        "specdecode_breakeven_acceptance_length",
        "1 + k*c: the mean acceptance length at which speculation stops paying.",
        labels,
        m.breakeven_acceptance_length,
    )
    g.add(
        "specdecode_draft_cost_ratio",
        "c behind the expected speedup and break-even: source configured, assumed (from the speculative config) "
        "or unknown (0 taken: the expected speedup is an upper bound).",
        {**labels, "source": str(m.draft_cost.source)},
        m.draft_cost.ratio,
    )
    _measured_gauges(g, m.model_name, speed)
    _right_size_gauges(g, m, speed)
    g.add("specdecode_kv_cache_usage_ratio", "Engine KV-cache usage, 0-1.", labels, m.kv_cache_usage)
    g.add(
        "specdecode_generation_tokens_per_second",
        "Generated tokens per second over the window.",
        labels,
        m.generation_tokens_per_second,
    )
    _latency_gauges(g, m, view)


def _measured_gauges(g: _Gauges, model: str, measured: MeasuredSpeedup | None) -> None:
    """The speedup this engine's own TPOT shows, at matched load (sidecar.core.measured_speedup); absent before."""
    if measured is None:
        return
    labels = {"model_name": model}
    g.add(
        "specdecode_measured_speedup",
        "TPOT without speculation / TPOT with it, at matched load (geometric means, load bands pooled).",
        labels,
        measured.speedup,
    )
    g.add("specdecode_measured_speedup_low", "Low end of its 95 % interval.", labels, measured.low)
    g.add("specdecode_measured_speedup_high", "High end of its 95 % interval.", labels, measured.high)
    g.add(
        "specdecode_effective_draft_cost_ratio",
        "c that makes L / (1 + k*c) equal the measured speedup: (L / S - 1) / k.",
        labels,
        measured.draft_cost,
    )
    g.add(
        "specdecode_measured_breakeven_acceptance_ratio",
        "Acceptance ratio at which speculation breaks even on this deployment (the effective c, clipped to 0-1).",
        labels,
        measured.breakeven_acceptance,
    )
    g.add(
        "specdecode_measured_breakeven_in_force",
        "1 when the measured break-even is established and the policy judges against it, 0 while --threshold does.",
        labels,
        1.0 if measured.established else 0.0,
    )
    for state, count in (("on", measured.on_windows), ("off", measured.off_windows)):
        g.add(
            "specdecode_measured_speedup_windows",
            "Windows the measured speedup rests on, by speculation state (only load bands holding both count).",
            {**labels, "speculation": state},
            float(count),
        )


def _right_size_gauges(g: _Gauges, m: ModelStats, measured: MeasuredSpeedup | None) -> None:
    """The K with the highest expected speedup and its plausible range (sidecar.core.right_size_k); absent
    with speculation off or without per-position counters."""
    size = right_size_k.for_model(m, measured)
    if size is None:
        return
    labels = {"model_name": m.model_name, "source": str(size.cost.source)}
    g.add(
        "specdecode_recommended_num_speculative_tokens",
        "K (1..current k) with the highest expected speedup L(K) / (1 + K*c) from per-position acceptance; "
        "source: where c comes from.",
        labels,
        float(size.recommended_k),
    )
    g.add(
        "specdecode_recommended_num_speculative_tokens_low",
        "Smallest K not distinguishable (95 %) from the recommended one.",
        labels,
        float(size.low),
    )
    g.add(
        "specdecode_recommended_num_speculative_tokens_high",
        "Largest K not distinguishable (95 %) from the recommended one.",
        labels,
        float(size.high),
    )
    g.add(
        "specdecode_recommended_expected_speedup",
        "Expected speedup L(K) / (1 + K*c) at the recommended K.",
        labels,
        size.recommended.speedup,
    )


def _schedule_gauges(g: _Gauges, model: str, plan: SchedulePlan | None) -> None:
    """The speedup per load band and the proposed cut (sidecar.core.load_schedule); absent with speculation
    off, a band absent without a verdict, the cut absent while no schedule is proposed."""
    if plan is None:
        return
    if plan.proposed and plan.cut is not None:
        g.add(
            "specdecode_proposed_schedule_cut",
            "Largest batch size at which speculation still pays: the proposed num_speculative_tokens_per_batch_size "
            "keeps K up to it and sets 0 above; source: measured (TPOT on and off per load band) or prior.",
            {"model_name": model, "source": str(plan.source)},
            float(plan.cut),
        )
    for band in plan.bands:
        if band.speedup is None:
            continue
        labels = {"model_name": model, "band": band.label, "source": str(band.source)}
        g.add(
            "specdecode_load_band_speedup",
            "Speedup with speculation per load band (batch sizes): TPOT off / on where both states have windows "
            "(source measured), else L / (1 + k*c) (source prior).",
            labels,
            band.speedup,
        )
        if band.source is ScheduleSource.MEASURED:
            g.add("specdecode_load_band_speedup_low", "Low end of its 95 % interval (measured bands).", labels,
                  band.low_speedup)  # fmt: skip
            g.add("specdecode_load_band_speedup_high", "High end of its 95 % interval (measured bands).", labels,
                  band.high_speedup)  # fmt: skip


def _latency_gauges(g: _Gauges, m: ModelStats, view: View) -> None:
    for metric, quantiles in m.latency.items():
        labels = {"model_name": m.model_name, "metric": metric}
        for key, value in quantiles.as_dict().items():
            g.add(
                "specdecode_latency_seconds",
                "Latency quantile over the window (histogram_quantile of bucket increases).",
                {**labels, "quantile": QUANTILE_LABELS[key]},
                value,
            )
        ratio = quantiles.p99_p50_ratio
        baseline = view.baseline.ratio(m.model_name, metric)
        g.add("specdecode_latency_p99_p50_ratio", "P99 / P50 over the window.", labels, ratio)
        g.add(
            "specdecode_latency_p99_p50_ratio_baseline",
            "P99 / P50 without speculation (configured or learned).",
            labels,
            baseline,
        )
        g.add(
            "specdecode_latency_divergence",
            "Current P99/P50 over the baseline's: above 1, the tail spreads more than without speculation.",
            labels,
            divergence(ratio, baseline),
        )


def _counts_by(name: str, documentation: str, label: str, keys: Iterable[str], counts: Mapping[str, int]) -> Metric:
    """A counter with one series per known key, 0 for a key not seen yet (so rate() has a series from the start)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key in keys:
        family.add_metric([key], float(counts.get(key, 0)))
    return family
