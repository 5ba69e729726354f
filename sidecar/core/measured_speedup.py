"""The speedup this deployment really gets, from its own latency with speculation on and off.

The speedup model (docs/math.md) needs the draft cost c, which no metric exposes, and assumes verifying k tokens
costs one target step. Both are settled by measuring: the time per output token (TPOT, per request) of windows
with speculation on against windows with it off, at the same load.

Samples: one per non-overlapping window (``every`` seconds) per model, with at least ``min_requests`` requests:
the window's mean TPOT (exact from the histogram's ``_sum`` and count; from its buckets, uniform within a bucket
as ``histogram_quantile`` assumes, only where no ``_sum`` is exposed), its load (mean ``num_requests_running``
over the window's scrapes), e2e P50/P99 and, with speculation on, L, k and the acceptance ratio. Off windows come
from wherever the engine ran without speculation while this process watched it: after a disable, before a trial,
a manual toggle, or configured values.

Matched load: windows are grouped by load band (running requests < 1, 1-2, 2-4, 4-8, ...: powers of two), and
only bands holding both states count. Per band, the speedup is the ratio of geometric means TPOT_off / TPOT_on,
its variance that of a difference of two means of logs; bands are pooled with inverse-variance weights, and the
95 % interval is exp(log S ± 1.96 se).

From S and the on windows' mean L: the effective draft cost c = (L / S − 1) / k, whatever makes a step slower
(the draft, the verification of k tokens, batching), and the acceptance ratio at which this deployment breaks
even. With every draft proposing k tokens the ratio is r = (L − 1) / k, and S = L / (1 + k·c) = 1 exactly when
r = c: the break-even acceptance ratio *is* the effective c.

The measurement is **established** (and replaces the fixed threshold in the policy, sidecar.core.policy) once
at least MIN_WINDOWS windows of each state sit in matched bands and the 95 % interval of the break-even ratio is
at most MAX_BREAKEVEN_WIDTH wide. Pure: no clock, no I/O.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import fmean

from sidecar.core.stats import ModelStats, Stats

MAX_SAMPLES = 120  # per model and state: two hours of 60 s windows
MIN_WINDOWS = 5  # windows of each state, in bands holding both, before the measurement counts
MIN_PER_BAND = 2  # windows of each state a band needs to be compared at all
MAX_BREAKEVEN_WIDTH = 0.1  # widest 95 % interval of the break-even acceptance ratio that may drive the policy
# Windows of each state kept on the target with a toggle (annotation spec-sidecar.io/speed): about 1 KB each.
STORED_WINDOWS = 30
MIN_REQUESTS = 20.0  # TPOT observations a window needs to be a sample
# The smallest spread of log TPOT between windows assumed: a few alike windows must not look infinitely certain.
MIN_LOG_SPREAD = 0.02
Z95 = 1.96
# The measured break-even never moves the policy's threshold outside this range.
THRESHOLD_FLOOR = 0.05
THRESHOLD_CEILING = 0.95


@dataclass(frozen=True)
class SpeedSample:
    """One window of one model, as the speedup measurement needs it."""

    at: float
    speculation: bool
    running: float  # mean requests running over the window
    tpot: float  # mean time per output token of the window's requests, seconds
    requests: float  # TPOT observations (requests finished) in the window
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    mean_acceptance_length: float | None = None
    num_speculative_tokens: int | None = None
    acceptance_ratio: float | None = None


@dataclass(frozen=True)
class SpeedHistory:
    """Recent samples per model, oldest first, kept separately for speculation on and off."""

    on: Mapping[str, tuple[SpeedSample, ...]] = field(default_factory=dict)
    off: Mapping[str, tuple[SpeedSample, ...]] = field(default_factory=dict)
    last_at: float | None = None

    def samples(self, model: str) -> tuple[SpeedSample, ...]:
        return (*self.off.get(model, ()), *self.on.get(model, ()))


def load_band(running: float) -> int:
    """0 for fewer than 1 running request, then 1 for [1, 2), 2 for [2, 4), 3 for [4, 8) ..."""
    if not math.isfinite(running) or running < 1.0:
        return 0
    return 1 + math.floor(math.log2(running))


def band_label(band: int) -> str:
    if band == 0:
        return "<1"
    low = 2 ** (band - 1)
    return f"{low}-{2 * low}"


def sample_from_stats(model: ModelStats, at: float) -> SpeedSample | None:
    """The window's sample, or None when it has too few requests or no TPOT/load to compare."""
    tpot = model.latency_mean.get("tpot")
    requests = model.latency_observations.get("tpot", 0.0)
    if tpot is None or tpot <= 0 or requests < MIN_REQUESTS or model.requests_running is None:
        return None
    e2e = model.latency.get("e2e")
    on = model.speculation
    return SpeedSample(
        at=at,
        speculation=on,
        running=model.requests_running,
        tpot=tpot,
        requests=requests,
        e2e_p50=e2e.p50 if e2e else None,
        e2e_p99=e2e.p99 if e2e else None,
        mean_acceptance_length=model.mean_acceptance_length if on else None,
        num_speculative_tokens=model.num_speculative_tokens if on else None,
        acceptance_ratio=model.acceptance_ratio if on else None,
    )


def learn(history: SpeedHistory, stats: Stats, now: float, every: float) -> SpeedHistory:
    """Add this window's samples, once per ``every`` seconds (the windows of samples never overlap)."""
    if history.last_at is not None and now - history.last_at < every:
        return history
    on = dict(history.on)
    off = dict(history.off)
    changed = False
    for model in stats.models:
        if model.invalid is not None:
            continue
        sample = sample_from_stats(model, now)
        if sample is None or (sample.speculation and sample.mean_acceptance_length is None):
            continue
        store = on if sample.speculation else off
        store[model.model_name] = (*store.get(model.model_name, ()), sample)[-MAX_SAMPLES:]
        changed = True
    if not changed:
        return history
    return replace(history, on=on, off=off, last_at=now)


def with_samples(history: SpeedHistory, model: str, samples: Sequence[SpeedSample]) -> SpeedHistory:
    """``history`` with ``samples`` added for ``model`` (configured or stored off windows, or tests)."""
    on = dict(history.on)
    off = dict(history.off)
    for sample in samples:
        store = on if sample.speculation else off
        store[model] = (*store.get(model, ()), sample)[-MAX_SAMPLES:]
    return replace(history, on=on, off=off)


@dataclass(frozen=True)
class BandSpeedup:
    band: int
    on_windows: int
    off_windows: int
    tpot_on: float  # geometric mean, seconds
    tpot_off: float
    speedup: float
    log_se: float


@dataclass(frozen=True)
class MeasuredSpeedup:
    """What the latency says: the speedup with its 95 % interval, the effective c and the break-even ratio."""

    speedup: float
    low: float
    high: float
    on_windows: int  # windows in bands holding both states
    off_windows: int
    bands: tuple[BandSpeedup, ...]
    mean_acceptance_length: float | None  # of the matched on windows
    num_speculative_tokens: int | None
    draft_cost: float | None  # effective c; None without L or k
    draft_cost_low: float | None  # its 95 % interval (unclipped: noise can put the low end below 0)
    draft_cost_high: float | None
    breakeven_acceptance: float | None  # = draft_cost, clipped to [0, 1]
    breakeven_low: float | None
    breakeven_high: float | None
    e2e_p50_ratio: float | None  # off / on: above 1, speculation makes the median request faster
    e2e_p99_ratio: float | None

    @property
    def finding(self) -> str:
        """What the interval says, whatever the break-even's width: 'slower' with speculation (the whole 95 %
        interval below 1), 'faster' (above 1) or 'unclear' (it holds 1)."""
        if self.high < 1.0:
            return "slower"
        if self.low > 1.0:
            return "faster"
        return "unclear"

    @property
    def established(self) -> bool:
        """Enough evidence to replace the fixed threshold (docs/policy.md, 'The measured break-even')."""
        if self.on_windows < MIN_WINDOWS or self.off_windows < MIN_WINDOWS:
            return False
        if self.draft_cost_low is None or self.draft_cost_high is None:
            return False
        # The unclipped interval: clipping at 0 would make a wide interval near 0 look narrow.
        return self.draft_cost_high - self.draft_cost_low <= MAX_BREAKEVEN_WIDTH

    @property
    def policy_threshold(self) -> float | None:
        """The acceptance ratio the policy should judge against, once established (None before)."""
        if not self.established or self.breakeven_acceptance is None:
            return None
        return min(max(self.breakeven_acceptance, THRESHOLD_FLOOR), THRESHOLD_CEILING)

    @property
    def evidence_needed(self) -> str:
        """What is still missing before the measurement takes over, in words (empty once established)."""
        if self.established:
            return ""
        missing = []
        if self.on_windows < MIN_WINDOWS:
            missing.append(f"{_windows(MIN_WINDOWS - self.on_windows)} with speculation on")
        if self.off_windows < MIN_WINDOWS:
            missing.append(f"{_windows(MIN_WINDOWS - self.off_windows)} with it off")
        if not missing:
            missing.append(f"a break-even interval no wider than {MAX_BREAKEVEN_WIDTH}")
        return ", ".join(missing) + " at matched load"


def _windows(count: int) -> str:
    return f"{count} more window" if count == 1 else f"{count} more windows"


def measure(samples: Sequence[SpeedSample]) -> MeasuredSpeedup | None:
    """The speedup at matched load, or None when no load band holds both states."""
    by_band: dict[int, tuple[list[SpeedSample], list[SpeedSample]]] = defaultdict(lambda: ([], []))
    for s in samples:
        if s.tpot > 0 and math.isfinite(s.tpot):
            by_band[load_band(s.running)][0 if s.speculation else 1].append(s)
    bands: list[BandSpeedup] = []
    matched_on: list[SpeedSample] = []
    matched_off: list[SpeedSample] = []
    for band in sorted(by_band):
        on, off = by_band[band]
        if len(on) < MIN_PER_BAND or len(off) < MIN_PER_BAND:
            continue
        log_on = [math.log(s.tpot) for s in on]
        log_off = [math.log(s.tpot) for s in off]
        se = math.sqrt(_spread(log_on) ** 2 / len(on) + _spread(log_off) ** 2 / len(off))
        mean_on, mean_off = fmean(log_on), fmean(log_off)
        speedup = math.exp(mean_off - mean_on)
        bands.append(BandSpeedup(band, len(on), len(off), math.exp(mean_on), math.exp(mean_off), speedup, se))
        matched_on += on
        matched_off += off
    if not bands:
        return None
    weights = [1.0 / (b.log_se**2) for b in bands]
    log_s = sum(w * math.log(b.speedup) for w, b in zip(weights, bands, strict=True)) / sum(weights)
    log_se = math.sqrt(1.0 / sum(weights))
    speedup, low, high = math.exp(log_s), math.exp(log_s - Z95 * log_se), math.exp(log_s + Z95 * log_se)
    lengths = [s.mean_acceptance_length for s in matched_on if s.mean_acceptance_length is not None]
    ks = [s.num_speculative_tokens for s in matched_on if s.num_speculative_tokens]
    length = fmean(lengths) if lengths else None
    k = max(set(ks), key=ks.count) if ks else None
    cost = effective_draft_cost(length, k, speedup)
    # A higher speedup means a cheaper step: the interval's ends swap.
    cost_low, cost_high = effective_draft_cost(length, k, high), effective_draft_cost(length, k, low)
    return MeasuredSpeedup(
        speedup=speedup,
        low=low,
        high=high,
        on_windows=len(matched_on),
        off_windows=len(matched_off),
        bands=tuple(bands),
        mean_acceptance_length=length,
        num_speculative_tokens=k,
        draft_cost=cost,
        draft_cost_low=cost_low,
        draft_cost_high=cost_high,
        breakeven_acceptance=_clip(cost),
        breakeven_low=_clip(cost_low),
        breakeven_high=_clip(cost_high),
        e2e_p50_ratio=_quantile_ratio(matched_off, matched_on, "e2e_p50"),
        e2e_p99_ratio=_quantile_ratio(matched_off, matched_on, "e2e_p99"),
    )


def effective_draft_cost(length: float | None, k: int | None, speedup: float) -> float | None:
    """The c that makes L / (1 + k·c) equal the measured speedup: (L / S − 1) / k."""
    if length is None or k is None or k <= 0 or speedup <= 0:
        return None
    return (length / speedup - 1.0) / k


def breakeven_for(cost: float | None) -> float | None:
    """The acceptance ratio at which speculation breaks even for a draft cost c: c itself (k tokens per draft)."""
    return _clip(cost)


def _clip(value: float | None) -> float | None:
    return None if value is None else min(max(value, 0.0), 1.0)


def _spread(values: Sequence[float]) -> float:
    if len(values) < 2:
        return MIN_LOG_SPREAD
    mean = fmean(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return max(sd, MIN_LOG_SPREAD)


def _quantile_ratio(off: Sequence[SpeedSample], on: Sequence[SpeedSample], name: str) -> float | None:
    off_values = [v for s in off if (v := getattr(s, name)) is not None and v > 0]
    on_values = [v for s in on if (v := getattr(s, name)) is not None and v > 0]
    if not off_values or not on_values:
        return None
    return math.exp(fmean(math.log(v) for v in off_values) - fmean(math.log(v) for v in on_values))


def encode(history: SpeedHistory, model: str) -> str | None:
    """The last STORED_WINDOWS windows of each state for ``model``, as compact JSON for an annotation.

    On: [running, tpot, requests, L, k]; off: [running, tpot, requests]. None when there is nothing to keep.
    """
    on = [
        [round(s.running, 3), float(f"{s.tpot:.5g}"), round(s.requests), round(s.mean_acceptance_length or 0, 4),
         s.num_speculative_tokens or 0]
        for s in history.on.get(model, ())[-STORED_WINDOWS:]
    ]  # fmt: skip
    off = [
        [round(s.running, 3), float(f"{s.tpot:.5g}"), round(s.requests)]
        for s in history.off.get(model, ())[-STORED_WINDOWS:]
    ]
    if not on and not off:
        return None
    return json.dumps({"v": 1, "model": model, "on": on, "off": off}, separators=(",", ":"))


def decode(text: str | None) -> tuple[str, tuple[SpeedSample, ...]] | None:
    """(model, samples) from :func:`encode`'s text; None for anything else (a hand edit reads as absent)."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("v") != 1 or not isinstance(raw.get("model"), str):
            return None
        samples = [
            SpeedSample(0.0, True, float(r), float(t), float(n), mean_acceptance_length=float(length) or None,
                        num_speculative_tokens=int(k) or None)
            for r, t, n, length, k in raw.get("on", [])
        ] + [SpeedSample(0.0, False, float(r), float(t), float(n)) for r, t, n in raw.get("off", [])]  # fmt: skip
    except (ValueError, TypeError):
        return None
    usable = tuple(s for s in samples if math.isfinite(s.tpot) and s.tpot > 0 and math.isfinite(s.running))
    return raw["model"], usable
