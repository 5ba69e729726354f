"""The decision framework (docs/decision-guide.md): what each condition says, then one recommendation.

Conditions (each ok / warn / bad / unknown with one sentence):
  enough data        the window carries enough draft tokens for any verdict
  acceptance         the token-weighted acceptance ratio against the 0.5 / 0.65 operating rule
  temperature        whether traffic sits in one temperature bucket, and where its median temperature is
  acceptance P10     per temperature bucket: the worst bucket with a real share of traffic
  mixed workload     the trap: the aggregate looks healthy while a bucket with a real share is below 0.5
  KV-cache headroom  a nearly full cache means big batches, where verification stops being free
  SLO                speculation shortens decoding (TPOT), never the first token (TTFT)
Then ONE of: keep / keep but watch / disable / disable for some traffic / collect more data, with its reasons.

Pure: plain values in, plain values out. Per-bucket numbers come in as :class:`BucketInput`, built from any
object shaped like the tap's BucketSummary (:func:`bucket_inputs`), so this module never imports the tap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from sidecar.core.stats import ModelStats, Stats
from sidecar.core.verdict import Thresholds

NO_TAP = "No per-temperature data: only requests sent through the sidecar's tap carry their temperature."


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    BAD = "bad"
    UNKNOWN = "unknown"


class Action(StrEnum):
    KEEP = "keep"
    KEEP_BUT_WATCH = "keep but watch"
    DISABLE = "disable"
    DISABLE_FOR_SOME = "disable for some traffic"
    COLLECT_MORE = "collect more data"


class Slo(StrEnum):
    TTFT = "ttft"
    TPOT = "tpot"
    E2E = "e2e"


class Condition(StrEnum):
    DATA = "enough data"
    ACCEPTANCE = "acceptance"
    TEMPERATURE = "temperature mix"
    BUCKET_P10 = "acceptance P10 per bucket"
    MIXED = "mixed-workload trap"
    KV_CACHE = "KV-cache headroom"
    SLO = "SLO"


def slo_from(value: object) -> Slo | None:
    """A setting's value ("ttft", "tpot", "e2e", None or anything else) → the Slo, None when not one."""
    return Slo(value) if isinstance(value, str) and value in set(Slo) else None


@dataclass(frozen=True)
class AdviceConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    slo: Slo | None = None
    # A bucket with at least this share of the window's requests is "a real share of traffic".
    real_share: float = 0.10
    # Traffic is homogeneous when one temperature bucket carries at least this share.
    homogeneous_share: float = 0.80
    # A bucket needs this many requests in the window before its P10 means anything.
    min_bucket_requests: int = 10
    kv_warn: float = 0.80
    kv_bad: float = 0.95


@dataclass(frozen=True)
class BucketInput:
    """One temperature bucket of one model over the tap's window."""

    bucket: str
    requests: int
    draft_tokens: int
    accepted_tokens: int
    p10: float | None

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens > 0 else None


class BucketSummaryLike(Protocol):
    """The fields of the tap's BucketSummary that advice reads (structural: no import of the tap)."""

    @property
    def model_name(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def window_requests(self) -> int: ...
    @property
    def window_draft_tokens(self) -> int: ...
    @property
    def window_accepted_tokens(self) -> int: ...
    @property
    def p10(self) -> float | None: ...


def bucket_inputs(summaries: Iterable[BucketSummaryLike], model_name: str) -> tuple[BucketInput, ...]:
    return tuple(
        BucketInput(s.bucket, s.window_requests, s.window_draft_tokens, s.window_accepted_tokens, s.p10)
        for s in summaries
        if s.model_name == model_name
    )


@dataclass(frozen=True)
class Finding:
    condition: Condition
    status: Status
    says: str


@dataclass(frozen=True)
class Advice:
    model_name: str
    findings: tuple[Finding, ...]
    recommendation: Action
    reasons: tuple[str, ...]

    def finding(self, condition: Condition) -> Finding:
        return next(f for f in self.findings if f.condition is condition)


def advise(model: ModelStats, buckets: Sequence[BucketInput], config: AdviceConfig) -> Advice:
    shares = _Shares(buckets)
    judged = [b for b in buckets if _judgeable(b, config)]
    findings = (
        _data(model, config),
        _acceptance(model, config),
        _temperature(shares, config),
        _bucket_p10(judged, shares, config),
        _mixed(model, judged, shares, config),
        _kv(model, config),
        _slo(model, config),
    )
    action, reasons = _recommend(model, findings, judged, shares, config)
    return Advice(model.model_name, findings, action, reasons)


def advise_stats(
    stats: Stats, summaries: Iterable[BucketSummaryLike] = (), config: AdviceConfig | None = None
) -> tuple[Advice, ...]:
    """One Advice per model of a Stats, with the tap's bucket summaries when there are any (none for `report`)."""
    rows = list(summaries)
    chosen = config or AdviceConfig()
    return tuple(advise(m, bucket_inputs(rows, m.model_name), chosen) for m in stats.models)


# --- the conditions ------------------------------------------------------------------------------------------


def _data(model: ModelStats, config: AdviceConfig) -> Finding:
    need = config.thresholds.min_draft_tokens
    if model.invalid is not None:
        detail = f"{model.invalid}: {model.invalid_detail}" if model.invalid_detail else model.invalid
        return Finding(
            Condition.DATA, Status.BAD, f"The window holds numbers no engine can produce ({detail}): nothing is judged."
        )
    if not model.speculation:
        return Finding(Condition.DATA, Status.UNKNOWN, "Speculation is off: there is no acceptance to measure.")
    if model.draft_tokens is None:
        return Finding(Condition.DATA, Status.UNKNOWN, "The engine exposes no draft-token counter to count evidence.")
    if model.draft_tokens < need:
        return Finding(
            Condition.DATA,
            Status.WARN,
            f"Only {model.draft_tokens:,.0f} draft tokens in the window; a verdict needs {need:,.0f}.",
        )
    return Finding(
        Condition.DATA, Status.OK, f"{model.draft_tokens:,.0f} draft tokens in the window (need {need:,.0f})."
    )


def _acceptance(model: ModelStats, config: AdviceConfig) -> Finding:
    ratio, t = model.acceptance_ratio, config.thresholds
    if ratio is None:
        return Finding(Condition.ACCEPTANCE, Status.UNKNOWN, "No acceptance ratio could be computed.")
    if ratio >= t.keep_from:
        return Finding(
            Condition.ACCEPTANCE, Status.OK, f"Acceptance {_r(ratio)} is at or above {t.keep_from:g}: likely a win."
        )
    if ratio >= t.disable_below:
        return Finding(
            Condition.ACCEPTANCE,
            Status.WARN,
            f"Acceptance {_r(ratio)} is borderline ({t.disable_below:g}-{t.keep_from:g}): measure P99 under load.",
        )
    return Finding(
        Condition.ACCEPTANCE, Status.BAD, f"Acceptance {_r(ratio)} is below {t.disable_below:g}: net-negative."
    )


def _temperature(shares: _Shares, config: AdviceConfig) -> Finding:
    if shares.total == 0:
        return Finding(Condition.TEMPERATURE, Status.UNKNOWN, NO_TAP)
    top = max(shares.buckets, key=lambda b: b.requests)
    top_share = shares.of(top)
    median = _median_bucket(shares)
    where = "median temperature unknown" if median is None else f"median temperature {_within(median)}"
    defaults = shares.of_label("default")
    note = f"; {defaults:.0%} omit temperature (the model's default, often 1.0)" if defaults > 0 else ""
    if top_share >= config.homogeneous_share:
        return Finding(
            Condition.TEMPERATURE,
            Status.OK,
            f"Homogeneous: {top_share:.0%} of requests at {_name(top.bucket)}, {where}{note}.",
        )
    return Finding(
        Condition.TEMPERATURE,
        Status.WARN,
        f"Mixed: the largest bucket ({_name(top.bucket)}) has only {top_share:.0%} of requests, {where}{note}; "
        "one on/off switch serves them all.",
    )


def _bucket_p10(judged: Sequence[BucketInput], shares: _Shares, config: AdviceConfig) -> Finding:
    if shares.total == 0:
        return Finding(Condition.BUCKET_P10, Status.UNKNOWN, NO_TAP)
    real = [b for b in judged if shares.of(b) >= config.real_share and b.p10 is not None]
    if not real:
        return Finding(
            Condition.BUCKET_P10,
            Status.UNKNOWN,
            f"No bucket with a real share of traffic has {config.min_bucket_requests}+ drafted requests yet.",
        )
    worst = min(real, key=lambda b: b.p10 if b.p10 is not None else math.inf)
    p10 = worst.p10 if worst.p10 is not None else math.nan
    t = config.thresholds
    text = f"Worst: {_name(worst.bucket)} ({shares.of(worst):.0%} of requests) has P10 {_r(p10)}"
    if p10 >= t.keep_from:
        return Finding(Condition.BUCKET_P10, Status.OK, f"{text}: even the slowest tenth of requests gain.")
    if p10 >= t.disable_below:
        return Finding(Condition.BUCKET_P10, Status.OK, f"{text}: the slowest tenth of requests is borderline.")
    return Finding(
        Condition.BUCKET_P10,
        Status.WARN,
        f"{text}: at least a tenth of its requests run below {t.disable_below:g}, net-negative for them.",
    )


def _mixed(model: ModelStats, judged: Sequence[BucketInput], shares: _Shares, config: AdviceConfig) -> Finding:
    if shares.total == 0:
        return Finding(Condition.MIXED, Status.UNKNOWN, NO_TAP)
    if not judged or model.acceptance_ratio is None:
        return Finding(Condition.MIXED, Status.UNKNOWN, "Not enough per-bucket data to look for the trap.")
    low = _trap_buckets(judged, shares, config)
    if model.acceptance_ratio >= config.thresholds.disable_below and low:
        names = ", ".join(
            f"{_name(b.bucket)} ({shares.of(b):.0%} of requests, acceptance {_r(_ratio(b))})" for b in low
        )
        # "Healthy" only from the keep line up: a borderline aggregate (0.5-0.65) is merely above the disable line.
        looks = (
            "looks healthy"
            if model.acceptance_ratio >= config.thresholds.keep_from
            else f"is above {config.thresholds.disable_below:g}"
        )
        return Finding(
            Condition.MIXED,
            Status.BAD,
            f"The aggregate {_r(model.acceptance_ratio)} {looks}, but {names} "
            f"{'is' if len(low) == 1 else 'are'} below {config.thresholds.disable_below:g}.",
        )
    return Finding(
        Condition.MIXED, Status.OK, "No bucket with a real share of traffic hides below the line under the aggregate."
    )


def _kv(model: ModelStats, config: AdviceConfig) -> Finding:
    usage = model.kv_cache_usage
    if usage is None or math.isnan(usage):
        return Finding(Condition.KV_CACHE, Status.UNKNOWN, "The engine reports no KV-cache usage.")
    if usage >= config.kv_bad:
        return Finding(
            Condition.KV_CACHE,
            Status.BAD,
            f"KV cache {usage:.0%} full at the last scrape: batches are large, verification is no longer free "
            "and drafts compete for KV.",
        )
    if usage >= config.kv_warn:
        return Finding(
            Condition.KV_CACHE,
            Status.WARN,
            f"KV cache {usage:.0%} full at the last scrape: little headroom; check real TPOT under load.",
        )
    return Finding(
        Condition.KV_CACHE, Status.OK, f"KV cache {usage:.0%} full at the last scrape: room for the draft tokens' KV."
    )


def _slo(model: ModelStats, config: AdviceConfig) -> Finding:
    if config.slo is None:
        return Finding(Condition.SLO, Status.UNKNOWN, "No SLO set (--slo ttft|tpot|e2e).")
    tail = _tail(model, config.slo)
    if config.slo is Slo.TTFT:
        return Finding(
            Condition.SLO,
            Status.WARN,
            "TTFT-bound: speculation shortens decoding, not the first token; here it can only cost" + tail + ".",
        )
    if config.slo is Slo.TPOT:
        return Finding(Condition.SLO, Status.OK, "TPOT-bound: decoding speed is what speculation improves" + tail + ".")
    return Finding(
        Condition.SLO, Status.OK, "End-to-end: long outputs gain from faster decoding, short ones hardly" + tail + "."
    )


def _tail(model: ModelStats, slo: Slo) -> str:
    q = model.latency.get(slo.value)
    if q is None or q.p50 is None or q.p99 is None:
        return ""
    return f" (now P50 {q.p50 * 1000:.0f} ms, P99 {q.p99 * 1000:.0f} ms)"


# --- the one recommendation ----------------------------------------------------------------------------------


def _recommend(
    model: ModelStats,
    findings: Sequence[Finding],
    judged: Sequence[BucketInput],
    shares: _Shares,
    config: AdviceConfig,
) -> tuple[Action, tuple[str, ...]]:
    by = {f.condition: f for f in findings}
    t = config.thresholds
    data, acceptance = by[Condition.DATA], by[Condition.ACCEPTANCE]
    if data.status is not Status.OK or acceptance.status is Status.UNKNOWN:
        reasons = [data.says] + ([] if model.speculation else ["Run `spec-sidecar probe` or a timed trial with it on."])
        return Action.COLLECT_MORE, tuple(reasons)
    good = [b for b in judged if shares.of(b) >= config.real_share and _ratio(b) >= t.keep_from]
    if acceptance.status is Status.BAD:
        if good:
            names = ", ".join(_name(b.bucket) for b in good)
            return Action.DISABLE_FOR_SOME, (acceptance.says, f"But {names} still gains: keep speculation there only.")
        return Action.DISABLE, (acceptance.says,)
    if by[Condition.MIXED].status is Status.BAD:
        return Action.DISABLE_FOR_SOME, (
            by[Condition.MIXED].says,
            "Route those temperatures to replicas without speculation, or disable it if you cannot split traffic.",
        )
    pressure = [by[c] for c in (Condition.KV_CACHE, Condition.SLO) if by[c].status in {Status.BAD, Status.WARN}]
    if acceptance.status is Status.WARN and pressure:
        return Action.DISABLE, (acceptance.says, *(f.says for f in pressure))
    concerns = [f for f in findings if f.status in {Status.WARN, Status.BAD}]
    if concerns:
        return Action.KEEP_BUT_WATCH, tuple(f.says for f in concerns)
    return Action.KEEP, (acceptance.says, data.says)


# --- helpers ---------------------------------------------------------------------------------------------


class _Shares:
    """Each bucket's share of the window's requests (all buckets of the model, default included)."""

    def __init__(self, buckets: Sequence[BucketInput]) -> None:
        self.buckets = tuple(buckets)
        self.total = sum(b.requests for b in self.buckets)

    def of(self, bucket: BucketInput) -> float:
        return bucket.requests / self.total if self.total else 0.0

    def of_label(self, label: str) -> float:
        return sum(self.of(b) for b in self.buckets if b.bucket == label)


def _r(ratio: float) -> str:
    """Two decimals, three below 0.01 so a tiny ratio does not read as zero."""
    return f"{ratio:.3f}" if 0 < ratio < 0.01 else f"{ratio:.2f}"


def _name(label: str) -> str:
    """A bucket label as a phrase: "temperature 0", "temperature [0.3,0.7)", "no temperature given"."""
    if label == "default":
        return "no temperature given"
    return f"temperature {label}"


def _within(label: str) -> str:
    return label if label == "0" else f"in {label}"


def _judgeable(bucket: BucketInput, config: AdviceConfig) -> bool:
    return (
        bucket.requests >= config.min_bucket_requests
        and bucket.draft_tokens >= config.thresholds.min_draft_tokens
        and bucket.acceptance is not None
    )


def _trap_buckets(judged: Sequence[BucketInput], shares: _Shares, config: AdviceConfig) -> list[BucketInput]:
    line = config.thresholds.disable_below
    return [b for b in judged if shares.of(b) >= config.real_share and _ratio(b) < line]


def _ratio(bucket: BucketInput) -> float:
    value = bucket.acceptance
    return value if value is not None else math.nan


_LOWER_BOUND = re.compile(r"^[\[(]([0-9.eE+-]+),")


def temperature_order(label: str) -> tuple[float, int] | None:
    """Sort key of a bucket label by temperature ("0" < "(0,0.3)" < "[0.3,0.7)" ...); None for default/invalid."""
    if label == "0":
        return (0.0, 0)
    match = _LOWER_BOUND.match(label)
    if match is None:
        return None
    try:
        low = float(match.group(1))
    except ValueError:
        return None
    return (low, 1 if label.startswith("(") else 0)


def _median_bucket(shares: _Shares) -> str | None:
    """The bucket holding the median request, among requests whose temperature is known."""
    known = sorted(
        ((key, b) for b in shares.buckets if (key := temperature_order(b.bucket)) is not None and b.requests > 0),
        key=lambda pair: pair[0],
    )
    total = sum(b.requests for _, b in known)
    running = 0
    for _, b in known:
        running += b.requests
        if running * 2 >= total:
            return b.bucket
    return None


# --- JSON -------------------------------------------------------------------------------------------------


def advice_json(advice: Advice) -> dict[str, Any]:
    return {
        "model_name": advice.model_name,
        "recommendation": advice.recommendation.value,
        "reasons": list(advice.reasons),
        "findings": [
            {"condition": f.condition.value, "status": f.status.value, "says": f.says} for f in advice.findings
        ],
    }
