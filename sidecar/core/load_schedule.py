"""Where speculation stops paying as the load grows, and the per-batch-size schedule of K that follows.

vLLM's speculative-config key ``num_speculative_tokens_per_batch_size`` (docs/engines.md, "K per batch size")
takes a list of ``[start, end, K]`` ranges of batch sizes, K = 0 allowed. Speculation pays at low load and can
hurt at high load (each step is then compute-bound, and verifying K extra tokens per request is no longer free),
so the schedule this module proposes keeps K where the windows say speculation pays and sets K = 0 above:

    [[1, cut, K], [cut + 1, max_num_seqs, 0]]

Public API (other modules and the engine tests build on these names; keep them):

  ``propose_schedule(samples, *, k, max_num_seqs, cost=None) -> SchedulePlan``
      ``samples`` are the speedup measurement's windows (:class:`sidecar.core.measured_speedup.SpeedSample`),
      both states mixed; ``k`` the K to keep below the cut (the current or the right-sized K); ``max_num_seqs``
      the engine's ``--max-num-seqs`` (None: vLLM's default, DEFAULT_MAX_NUM_SEQS); ``cost`` the draft cost c
      for bands without windows of both states (None: such bands have no verdict).
  ``SchedulePlan`` (frozen): ``cut`` (the largest batch size where speculation still pays, or None for no
      schedule), ``k``, ``max_num_seqs``, ``bands`` (one :class:`LoadBand` per load band seen, lowest first),
      ``source`` (:class:`ScheduleSource`: ``measured``, ``prior`` or ``none``), ``reason`` (a sentence: why this
      cut, or why no schedule), ``as_config_value()`` (the list for the config key, or None), ``as_json()``.
  ``LoadBand`` (frozen): ``low``/``high`` (batch sizes, inclusive), window counts, ``speedup`` with its 95 %
      interval (``low_speedup``/``high_speedup``, equal to it for a prior), ``source`` and ``verdict``
      (:class:`BandVerdict`: pays, hurts, unclear, unknown).
  ``batch_band(running)`` -> (low, high): the band of a window's mean number of running requests.
  ``for_model(samples, model, measured, max_num_seqs)``: the plan for one model's window as ``report``,
      ``/status``, the metrics and the policy show it (K: the right-sized K when it is better with 95 %
      confidence, else the running K; c as the right-sizing uses it). With speculation off: the bands only
      (measured), no schedule.

Load bands are batch sizes 1, 2, 3-4, 5-8, 9-16, ... (powers of two above 2). A window's batch size is its mean
``vllm:num_requests_running`` rounded (at least 1): a mean over a window, so a band's edge is fuzzy by about the
spread of the load within a window.

Per band:
  measured  both states have at least MIN_PER_BAND windows: the speedup TPOT_off / TPOT_on as a ratio of
            geometric means with its 95 % interval (as in sidecar.core.measured_speedup). Pays when the whole
            interval is above 1, hurts when it is below 1, unclear when it holds 1.
  prior     only speculation-on windows (at least MIN_PER_BAND): the expected speedup L / (1 + k·c) from the
            band's mean acceptance length L and K and the draft cost c given (measured, configured or
            assumed; an unknown c gives no verdict). No interval: pays above 1, hurts below. The prior's c does
            not change with load, so it finds a cut only where acceptance itself falls with load.
  unknown   too few windows.

The cut: the lowest band that hurts sets the ceiling; the cut is the top of the highest band below it whose
speedup is at least 1, provided some band below it pays. No schedule (cut None, with the reason) when no band
hurts (speculation pays, or is not shown to hurt, everywhere seen), when no band below the first hurting band
pays (speculation pays nowhere: switching it off is the move), when fewer than two bands have a verdict (data
too thin), or when the cut would reach ``max_num_seqs``. The plan's source is ``prior`` when either band that
decides the cut (the top paying band, the first hurting band) is a prior, else ``measured``.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from statistics import fmean
from typing import Any

from sidecar.core import right_size_k
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.measured_speedup import MIN_LOG_SPREAD, MIN_PER_BAND, Z95, MeasuredSpeedup, SpeedSample
from sidecar.core.stats import ModelStats

KEY = "num_speculative_tokens_per_batch_size"
# vLLM's --max-num-seqs when the args do not set it (the V1 engine's default for online serving).
DEFAULT_MAX_NUM_SEQS = 256


class ScheduleSource(StrEnum):
    MEASURED = "measured"  # latency with speculation on and off, in the same load band
    PRIOR = "prior"  # acceptance and the draft cost c, no off windows to compare
    NONE = "none"  # no verdict / no schedule


class BandVerdict(StrEnum):
    PAYS = "pays"
    HURTS = "hurts"
    UNCLEAR = "unclear"  # the measured interval holds 1
    UNKNOWN = "unknown"  # too few windows (or an unknown c)


@dataclass(frozen=True)
class LoadBand:
    low: int  # batch sizes, inclusive
    high: int
    on_windows: int
    off_windows: int
    speedup: float | None
    low_speedup: float | None  # 95 % interval (equal to speedup for a prior, which has none)
    high_speedup: float | None
    source: ScheduleSource
    verdict: BandVerdict
    mean_acceptance_length: float | None = None

    @property
    def label(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    def as_json(self) -> dict[str, Any]:
        return {
            "band": self.label,
            "low": self.low,
            "high": self.high,
            "on_windows": self.on_windows,
            "off_windows": self.off_windows,
            "speedup": self.speedup,
            "interval": None if self.low_speedup is None else [self.low_speedup, self.high_speedup],
            "source": str(self.source),
            "verdict": str(self.verdict),
            "mean_acceptance_length": self.mean_acceptance_length,
        }


@dataclass(frozen=True)
class SchedulePlan:
    cut: int | None  # largest batch size where speculation still pays; None: no schedule
    k: int | None  # K kept at and below the cut
    max_num_seqs: int
    bands: tuple[LoadBand, ...]
    source: ScheduleSource
    reason: str

    @property
    def proposed(self) -> bool:
        return self.cut is not None and self.k is not None and self.k > 0

    def as_config_value(self) -> list[list[int]] | None:
        """``[[1, cut, K], [cut + 1, max_num_seqs, 0]]``, or None without a schedule."""
        if not self.proposed or self.cut is None or self.k is None:
            return None
        return [[1, self.cut, self.k], [self.cut + 1, self.max_num_seqs, 0]]

    @property
    def words(self) -> str:
        """One sentence for people: the schedule and why, or why none."""
        value = self.as_config_value()
        if value is None:
            return f"no schedule: {self.reason}"
        return f"K = {self.k} up to batch size {self.cut}, 0 above ({self.source}): {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {
            "cut": self.cut,
            "k": self.k,
            "max_num_seqs": self.max_num_seqs,
            "value": self.as_config_value(),
            "source": str(self.source),
            "reason": self.reason,
            "words": self.words,
            "bands": [b.as_json() for b in self.bands],
        }


def batch_band(running: float) -> tuple[int, int]:
    """The band (low, high) of a window's mean running requests: 1, 2, 3-4, 5-8, 9-16, ..."""
    size = max(1, round(running)) if math.isfinite(running) else 1
    if size <= 2:
        return size, size
    high = 1 << (size - 1).bit_length()
    return high // 2 + 1, high


def propose_schedule(
    samples: Sequence[SpeedSample],
    *,
    k: int | None,
    max_num_seqs: int | None,
    cost: DraftCost | None = None,
) -> SchedulePlan:
    """The per-band verdicts and the schedule they imply (see the module docstring)."""
    limit = max_num_seqs if max_num_seqs is not None and max_num_seqs > 0 else DEFAULT_MAX_NUM_SEQS
    grouped: dict[tuple[int, int], tuple[list[SpeedSample], list[SpeedSample]]] = defaultdict(lambda: ([], []))
    for s in samples:
        if s.tpot > 0 and math.isfinite(s.tpot) and math.isfinite(s.running):
            grouped[batch_band(s.running)][0 if s.speculation else 1].append(s)
    bands = tuple(_band(low, high, *grouped[(low, high)], cost) for low, high in sorted(grouped))

    def plan(cut: int | None, source: ScheduleSource, reason: str) -> SchedulePlan:
        return SchedulePlan(cut, k, limit, bands, source, reason)

    if k is None or k <= 0:
        return plan(None, ScheduleSource.NONE, "speculation is not on (no K to keep at low load)")
    judged = [b for b in bands if b.verdict is not BandVerdict.UNKNOWN]
    if len(judged) < 2:
        return plan(None, ScheduleSource.NONE, _thin(bands))
    hurting = [b for b in judged if b.verdict is BandVerdict.HURTS]
    if not hurting:
        return plan(None, ScheduleSource.NONE, "speculation is not shown to hurt at any load seen: keep it on")
    first_hurt = hurting[0]
    below = [b for b in judged if b.high < first_hurt.low]
    if not any(b.verdict is BandVerdict.PAYS for b in below):
        return plan(
            None,
            ScheduleSource.NONE,
            f"speculation pays at no load below batch size {first_hurt.low}, where it hurts: a schedule would "
            "keep nothing (switching speculation off is the move)",
        )
    top = max((b for b in below if b.speedup is not None and b.speedup >= 1.0), key=lambda b: b.high)
    cut = top.high
    if cut >= limit:
        return plan(None, ScheduleSource.NONE, f"speculation pays up to max_num_seqs ({limit}): nothing to cut")
    deciding = (top, first_hurt)
    source = (
        ScheduleSource.PRIOR if any(b.source is ScheduleSource.PRIOR for b in deciding) else ScheduleSource.MEASURED
    )
    paying = max((b for b in below if b.verdict is BandVerdict.PAYS), key=lambda b: b.high)
    reason = f"speculation pays at batch size {paying.label} ({_figure(paying)})"
    if top is not paying:  # the cut's own band is only not shown to lose: say so rather than "pays"
        reason += f", is not shown to lose at {top.label} ({_figure(top)})"
    reason += f" and hurts at {first_hurt.label} ({_figure(first_hurt)})"
    later = [b for b in judged if b.low > first_hurt.high and b.verdict is BandVerdict.PAYS]
    if later:
        reason += f"; it pays again at {', '.join(b.label for b in later)} (load and speedup do not fall together)"
    return plan(cut, source, reason)


def for_model(
    samples: Sequence[SpeedSample],
    model: ModelStats,
    measured: MeasuredSpeedup | None = None,
    max_num_seqs: int | None = None,
) -> SchedulePlan | None:
    """The plan for one model. With speculation off, the bands still show what the windows measured, with the K
    the speculation-on windows ran at (no schedule can be written then: the reason says so). None without any
    window and without speculation."""
    if not model.speculation:
        ks = [s.num_speculative_tokens for s in samples if s.speculation and s.num_speculative_tokens]
        if not ks:
            return None
        plan = propose_schedule(samples, k=max(set(ks), key=ks.count), max_num_seqs=max_num_seqs)
        if plan.cut is None:
            return plan
        return replace(plan, reason=f"{plan.reason}; speculation is off now, so there is no K to schedule")
    size = right_size_k.for_model(model, measured)
    k = size.recommended_k if size is not None and size.distinguishable else model.num_speculative_tokens
    cost, _interval = right_size_k.draft_cost_for(model.draft_cost, measured)
    return propose_schedule(samples, k=k, max_num_seqs=max_num_seqs, cost=cost)


def schedule_json(plan: SchedulePlan | None) -> dict[str, Any] | None:
    """``report --json``, ``/api/report`` and ``/status``: the plan, null with speculation off."""
    return None if plan is None else plan.as_json()


def _band(low: int, high: int, on: list[SpeedSample], off: list[SpeedSample], cost: DraftCost | None) -> LoadBand:
    lengths = [s.mean_acceptance_length for s in on if s.mean_acceptance_length is not None]
    length = fmean(lengths) if lengths else None
    if len(on) >= MIN_PER_BAND and len(off) >= MIN_PER_BAND:
        log_on = [math.log(s.tpot) for s in on]
        log_off = [math.log(s.tpot) for s in off]
        se = math.sqrt(_spread(log_on) ** 2 / len(on) + _spread(log_off) ** 2 / len(off))
        log_s = fmean(log_off) - fmean(log_on)
        s, s_low, s_high = math.exp(log_s), math.exp(log_s - Z95 * se), math.exp(log_s + Z95 * se)
        verdict = BandVerdict.PAYS if s_low > 1.0 else BandVerdict.HURTS if s_high < 1.0 else BandVerdict.UNCLEAR
        return LoadBand(low, high, len(on), len(off), s, s_low, s_high, ScheduleSource.MEASURED, verdict, length)
    ks = [s.num_speculative_tokens for s in on if s.num_speculative_tokens]
    usable_cost = cost is not None and cost.source is not CostSource.UNKNOWN and math.isfinite(cost.ratio)
    if len(on) >= MIN_PER_BAND and length is not None and ks and usable_cost and cost is not None:
        k = max(set(ks), key=ks.count)
        expected = length / (1.0 + k * max(cost.ratio, 0.0))
        verdict = BandVerdict.PAYS if expected > 1.0 else BandVerdict.HURTS if expected < 1.0 else BandVerdict.UNCLEAR
        return LoadBand(
            low, high, len(on), len(off), expected, expected, expected, ScheduleSource.PRIOR, verdict, length
        )
    return LoadBand(low, high, len(on), len(off), None, None, None, ScheduleSource.NONE, BandVerdict.UNKNOWN, length)


def _thin(bands: Sequence[LoadBand]) -> str:
    seen = ", ".join(f"{b.label}: {b.on_windows} on / {b.off_windows} off" for b in bands) or "no windows yet"
    return (
        f"data too thin: a schedule needs a verdict in at least two load bands ({MIN_PER_BAND} windows of each "
        f"state in a band, or of speculation on with a known draft cost); windows so far: {seen}"
    )


def _figure(band: LoadBand) -> str:
    if band.speedup is None:
        return "no figure"
    if band.source is ScheduleSource.PRIOR:
        return f"expected speedup {band.speedup:.3g}, prior"
    return f"speedup {band.speedup:.3g}, 95 % {band.low_speedup:.3g}-{band.high_speedup:.3g}, measured"


def _spread(values: Sequence[float]) -> float:
    if len(values) < 2:
        return MIN_LOG_SPREAD
    mean = fmean(values)
    return max(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), MIN_LOG_SPREAD)
