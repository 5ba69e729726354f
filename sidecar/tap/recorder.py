"""What the tap records per (model, temperature bucket), and the Prometheus collector that exports it.

Totals (counters, histograms) live for the process. The gauges look at a sliding window of recent requests:
token-weighted acceptance (accepted / draft tokens summed over the window) and P10/P50/P90 of the
per-request acceptance ratios. A bucket with no drafted request in the window has no gauge sample at all.
Recording happens on the event loop, collection in whatever thread serves /metrics: one lock, held briefly.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core.report import BucketSummary
from sidecar.core.request_acceptance import SOURCE_ESTIMATE, SOURCE_METRICS, SOURCE_NONE, SpecCounts

RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
QUANTILES = (0.1, 0.5, 0.9)
SOURCES = (SOURCE_METRICS, SOURCE_ESTIMATE, SOURCE_NONE)

# Requests the tap could not relay whole, by reason (specdecode_tap_errors_total). Every reason is exported from
# the start (at 0), so a rate() over it never starts from a missing series.
ERROR_UPSTREAM_BROKE = "upstream_broke"  # vLLM closed or went silent in the middle of its response
ERROR_UPSTREAM_UNREACHABLE = "upstream_unreachable"  # 502: no response head (refused, reset, not HTTP)
ERROR_UPSTREAM_TIMEOUT = "upstream_timeout"  # 504: no response head within the read timeout
ERROR_BODY_TOO_LARGE = "body_too_large"  # 413: an observed request body over tap_max_body_bytes
ERROR_PATH_REFUSED = "path_refused"  # 403: a path tap_forward_paths does not allow
# Counted by the listener (sidecar/web/listener.py), on either port: a client cut off for being too slow.
ERROR_CLIENT_HEADER_TIMEOUT = "client_header_timeout"
ERROR_CLIENT_BODY_TIMEOUT = "client_body_timeout"
ERROR_REASONS = (
    ERROR_UPSTREAM_BROKE,
    ERROR_UPSTREAM_UNREACHABLE,
    ERROR_UPSTREAM_TIMEOUT,
    ERROR_BODY_TOO_LARGE,
    ERROR_PATH_REFUSED,
    ERROR_CLIENT_HEADER_TIMEOUT,
    ERROR_CLIENT_BODY_TIMEOUT,
)


@dataclass(frozen=True)
class RequestRecord:
    """One completed n == 1 request as the tap saw it."""

    model_name: str
    bucket: str
    source: str
    spec: SpecCounts | None = None
    ttft_seconds: float | None = None
    tpot_seconds: float | None = None


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class _Bucket:
    sources: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    draft: int = 0
    accepted: int = 0
    ratio: _Histogram = field(default_factory=lambda: _Histogram(RATIO_BUCKETS))
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    tpot: _Histogram = field(default_factory=lambda: _Histogram(TPOT_BUCKETS))
    # (when, draft, accepted) per request, oldest first; draft 0 for requests without acceptance
    recent: deque[tuple[float, int, int]] = field(default_factory=deque)


def sample_quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on an ascending list."""
    if not sorted_values:
        return None
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class TapRecorder:
    def __init__(self, window_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        # Written on the event loop only; an int read from another thread is never half-written.
        self.errors: dict[str, int] = dict.fromkeys(ERROR_REASONS, 0)

    def error(self, reason: str) -> None:
        self.errors[reason] += 1

    def record(self, record: RequestRecord) -> None:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get((record.model_name, record.bucket))
            if bucket is None:
                bucket = self._buckets[(record.model_name, record.bucket)] = _Bucket()
            bucket.sources[record.source] = bucket.sources.get(record.source, 0) + 1
            draft = accepted = 0
            if record.spec is not None:
                draft, accepted = record.spec.draft_tokens, record.spec.accepted_tokens
                bucket.draft += draft
                bucket.accepted += accepted
                if record.spec.ratio is not None:
                    bucket.ratio.observe(record.spec.ratio)
            if record.ttft_seconds is not None:
                bucket.ttft.observe(record.ttft_seconds)
            if record.tpot_seconds is not None:
                bucket.tpot.observe(record.tpot_seconds)
            bucket.recent.append((now, draft, accepted))
            self._expire(bucket, now)

    def _expire(self, bucket: _Bucket, now: float) -> None:
        horizon = now - self.window_seconds
        while bucket.recent and bucket.recent[0][0] < horizon:
            bucket.recent.popleft()

    def bucket_summary(self) -> list[BucketSummary]:
        return [summary for summary, _ in self.export_rows()]

    def export_rows(self) -> list[tuple[BucketSummary, _Bucket]]:
        """Per bucket: its summary and a copy of its totals, taken together under the lock."""
        now = self._clock()
        with self._lock:
            rows = []
            for (model, label), bucket in sorted(self._buckets.items()):
                self._expire(bucket, now)
                rows.append((self._summarize(model, label, bucket), _copy(bucket)))
            return rows

    @staticmethod
    def _summarize(model: str, label: str, bucket: _Bucket) -> BucketSummary:
        window_draft = sum(d for _, d, _ in bucket.recent)
        window_accepted = sum(a for _, _, a in bucket.recent)
        ratios = sorted(a / d for _, d, a in bucket.recent if d > 0)
        p10, p50, p90 = (sample_quantile(ratios, q) for q in QUANTILES)
        return BucketSummary(
            model_name=model,
            bucket=label,
            requests=sum(bucket.sources.values()),
            draft_tokens=bucket.draft,
            accepted_tokens=bucket.accepted,
            window_requests=len(bucket.recent),
            window_draft_tokens=window_draft,
            window_accepted_tokens=window_accepted,
            acceptance=window_accepted / window_draft if window_draft > 0 else None,
            p10=p10,
            p50=p50,
            p90=p90,
            sources=dict(bucket.sources),
        )

    def collector(self) -> Collector:
        return TapCollector(self)


def _copy(bucket: _Bucket) -> _Bucket:
    """Histograms and counters copied under the lock, so exposition never reads them half-updated."""
    copy = _Bucket(sources=dict(bucket.sources), draft=bucket.draft, accepted=bucket.accepted)
    for name in ("ratio", "ttft", "tpot"):
        source, target = getattr(bucket, name), getattr(copy, name)
        target.counts, target.count, target.total = list(source.counts), source.count, source.total
    return copy


LABELS = ["model_name", "temperature_bucket"]


class TapCollector(Collector):
    def __init__(self, recorder: TapRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        rows = self._recorder.export_rows()
        ratio = HistogramMetricFamily(
            "specdecode_request_acceptance_ratio",
            "Per-request draft acceptance ratio (accepted / draft tokens) of n == 1 requests seen by the tap.",
            labels=LABELS,
        )
        draft = CounterMetricFamily(
            "specdecode_request_draft_tokens",
            "Draft tokens proposed for requests seen by the tap (per-request metrics or chunk estimate).",
            labels=LABELS,
        )
        accepted = CounterMetricFamily(
            "specdecode_request_accepted_tokens",
            "Draft tokens accepted for requests seen by the tap (per-request metrics or chunk estimate).",
            labels=LABELS,
        )
        tapped = CounterMetricFamily(
            "specdecode_tapped_requests",
            "Completed n == 1 requests seen by the tap, by where their acceptance came from.",
            labels=[*LABELS, "source"],
        )
        window_ratio = GaugeMetricFamily(
            "specdecode_bucket_acceptance_ratio",
            "Token-weighted acceptance ratio over the window (sum accepted / sum draft tokens).",
            labels=LABELS,
        )
        quantile = GaugeMetricFamily(
            "specdecode_bucket_acceptance_quantile",
            "Quantiles of per-request acceptance ratios over the window.",
            labels=[*LABELS, "quantile"],
        )
        ttft = HistogramMetricFamily(
            "specdecode_request_ttft_seconds",
            "Time to first token measured at the tap, streaming requests (request received → first bytes).",
            labels=LABELS,
        )
        tpot = HistogramMetricFamily(
            "specdecode_request_tpot_seconds",
            "Time per output token after the first, measured at the tap on streaming requests.",
            labels=LABELS,
        )
        errors = CounterMetricFamily(
            "specdecode_tap_errors",
            "Requests the tap could not relay whole: refused (path, body size) or failed upstream, by reason.",
            labels=["reason"],
        )
        for reason, count in list(self._recorder.errors.items()):
            errors.add_metric([reason], float(count))
        for summary, bucket in rows:
            labels = [summary.model_name, summary.bucket]
            ratio.add_metric(labels, bucket.ratio.cumulative(), bucket.ratio.total)
            ttft.add_metric(labels, bucket.ttft.cumulative(), bucket.ttft.total)
            tpot.add_metric(labels, bucket.tpot.cumulative(), bucket.tpot.total)
            draft.add_metric(labels, float(bucket.draft))
            accepted.add_metric(labels, float(bucket.accepted))
            for source, count in sorted(bucket.sources.items()):
                tapped.add_metric([*labels, source], float(count))
            if summary.acceptance is not None:
                window_ratio.add_metric(labels, summary.acceptance)
            for q, value in zip(QUANTILES, (summary.p10, summary.p50, summary.p90), strict=True):
                if value is not None:
                    quantile.add_metric([*labels, str(q)], value)
        yield from (ratio, draft, accepted, tapped, window_ratio, quantile, ttft, tpot, errors)
