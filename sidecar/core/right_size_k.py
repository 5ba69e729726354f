"""Right-size K: the number of speculative tokens (1..current K) that maximises tokens per unit of cost.

From the window's per-position acceptance (vLLM's ``num_accepted_tokens_per_pos`` over ``num_drafts``) and the
draft cost ratio c (docs/math.md, "Right-sizing K"):

  rate_i = A_i / D is the share of drafts whose first i+1 tokens were all accepted. A draft proposes its tokens
  one after the other, so a smaller K' keeps positions 0..K'-1 as they were and drops the rest:
      L(K') = 1 + sum(rate_i, i < K')            tokens per verify step with K' drafts
      S(K') = L(K') / (1 + K'·c)                 the same speedup model as specdecode_expected_speedup
  The per-draft accepted count X has P(X >= j) = rate_(j-1), so its whole distribution is known from the
  counters; the difference S(K') - S(K) is a mean over drafts of (1 + min(X, K'))/(1 + K'c) - (1 + X)/(1 + Kc),
  whose 95 % interval follows from that distribution and the number of drafts.

Every K' whose difference from the best K' is within its interval is *plausible*; the range of plausible K'
(widened by the best K' at either end of a measured c's interval) is the recommendation's uncertainty. The
recommended K is *distinguishable* from the current K when the current K is not plausible.

Pure: numbers in, numbers out. None where the window cannot say (no drafts, no positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.measured_speedup import MeasuredSpeedup
from sidecar.core.stats import ModelStats

Z95 = 1.96
# A reduced K must beat 1 by this much at the low end of its interval before it replaces a disable.
REDUCE_MARGIN = 0.05


@dataclass(frozen=True)
class KOption:
    """One candidate K: what it would give, modelled from this window's per-position acceptance."""

    k: int
    mean_acceptance_length: float  # L(K')
    acceptance_ratio: float  # (L(K') - 1) / K': what the acceptance ratio would read at K'
    speedup: float  # S(K') = L(K') / (1 + K'·c)
    speedup_low: float  # 95 % interval of S(K') from the drafts counted
    speedup_high: float
    versus_best: float  # S(K') - S(best)
    versus_best_low: float  # 95 % interval of that difference
    versus_best_high: float

    @property
    def plausible(self) -> bool:
        """Not distinguishable from the best K at 95 %."""
        return self.versus_best_high >= 0.0


@dataclass(frozen=True)
class RightSize:
    current_k: int
    recommended_k: int
    low: int  # smallest plausible K (the recommendation's uncertainty)
    high: int  # largest plausible K
    distinguishable: bool  # the current K is not plausible: the recommended one is better with 95 % confidence
    cost: DraftCost
    drafts: float
    options: tuple[KOption, ...]

    def option(self, k: int) -> KOption:
        return self.options[k - 1]

    @property
    def current(self) -> KOption:
        return self.option(self.current_k)

    @property
    def recommended(self) -> KOption:
        return self.option(self.recommended_k)

    @property
    def gain(self) -> float:
        """Expected speedup at the recommended K over that at the current K (1.0: no gain)."""
        current = self.current.speedup
        return self.recommended.speedup / current if current > 0 else 1.0

    @property
    def words(self) -> str:
        """One sentence for people, with c's source (an assumed or unknown c is never a fact)."""
        rec, cur = self.recommended, self.current
        cost = self.cost.label
        if self.cost.source is CostSource.UNKNOWN:
            return (
                f"K = {self.current_k} kept: the draft cost is unknown ({cost}), and with drafts taken as free a "
                "smaller K can never look better; set --draft-cost-ratio to right-size K"
            )
        span = f"plausible {self.low}-{self.high}" if self.low != self.high else "no other K plausible"
        if self.recommended_k == self.current_k:
            return f"K = {self.current_k} is the best K here (expected speedup {cur.speedup:.3g}, {span}; {cost})"
        certainty = "better with 95 % confidence" if self.distinguishable else "not distinguishable from the current K"
        return (
            f"K = {self.recommended_k} would give expected speedup {rec.speedup:.3g} against {cur.speedup:.3g} "
            f"at K = {self.current_k} ({certainty}; {span}; {cost})"
        )


def draft_cost_for(cost: DraftCost, measured: MeasuredSpeedup | None) -> tuple[DraftCost, tuple[float, float] | None]:
    """The c to right-size K with, and its 95 % interval when it is measured.

    The measured effective c once the measurement is established (it holds every cost of a step with
    speculation, not just the draft's); else the window's c (configured, assumed from the config, or unknown).
    """
    if measured is not None and measured.established and measured.draft_cost is not None:
        c = max(measured.draft_cost, 0.0)
        basis = f"effective c measured from TPOT with speculation on and off ({measured.on_windows} on windows)"
        interval = None
        if measured.draft_cost_low is not None and measured.draft_cost_high is not None:
            interval = (max(measured.draft_cost_low, 0.0), max(measured.draft_cost_high, 0.0))
        return DraftCost(c, CostSource.MEASURED, basis), interval
    return cost, None


def right_size(
    position_acceptance: Sequence[float],
    drafts: float | None,
    cost: DraftCost,
    *,
    cost_interval: tuple[float, float] | None = None,
) -> RightSize | None:
    """The K in 1..len(position_acceptance) with the highest expected speedup, with its uncertainty."""
    if drafts is None or not drafts > 0 or not position_acceptance:
        return None
    if not all(math.isfinite(r) for r in position_acceptance) or not math.isfinite(cost.ratio) or cost.ratio < 0:
        return None
    rates = _monotone(position_acceptance)
    current = len(rates)
    best = _best(rates, cost.ratio)
    options = tuple(_option(rates, k, best, cost.ratio, drafts) for k in range(1, current + 1))
    plausible = [o.k for o in options if o.plausible]
    low, high = min(plausible), max(plausible)
    for c in cost_interval or ():
        if math.isfinite(c) and c >= 0:
            at_c = _best(rates, c)
            low, high = min(low, at_c), max(high, at_c)
    distinguishable = best != current and not options[current - 1].plausible
    return RightSize(current, best, low, high, distinguishable, cost, drafts, options)


def reduce_instead_of_disable(
    size: RightSize | None, threshold: float, margin: float = REDUCE_MARGIN
) -> KOption | None:
    """The smaller K to switch to instead of turning speculation off, or None when off is the better move.

    A K' < K qualifies when the first K' positions still pay on their own: the acceptance ratio they would read
    clears ``threshold`` (so the policy will not trip again on the same drafts), and the low end of the expected
    speedup's 95 % interval at K' is above 1 + ``margin``. Of those, the one with the highest expected speedup.
    An unknown c (drafts taken as free) never qualifies: the model cannot say the drafts pay.
    """
    if size is None or size.cost.source is CostSource.UNKNOWN:
        return None
    fits = [
        o
        for o in size.options
        if o.k < size.current_k and o.acceptance_ratio >= threshold and o.speedup_low > 1.0 + margin
    ]
    return max(fits, key=lambda o: (o.speedup, -o.k)) if fits else None


def _monotone(rates: Sequence[float]) -> tuple[float, ...]:
    """rate_i clipped to [0, 1] and made non-increasing: a token counts only after every token before it."""
    out: list[float] = []
    ceiling = 1.0
    for r in rates:
        ceiling = min(ceiling, max(r, 0.0))
        out.append(ceiling)
    return tuple(out)


def _speedup(rates: Sequence[float], k: int, c: float) -> float:
    return (1.0 + sum(rates[:k])) / (1.0 + k * c)


def _best(rates: Sequence[float], c: float) -> int:
    """argmax of S(K'); on a tie (to rounding) the larger K, the one already running."""
    speedups = [_speedup(rates, k, c) for k in range(1, len(rates) + 1)]
    top = max(speedups)
    return max(k for k, s in enumerate(speedups, start=1) if s >= top - 1e-12)


def _distribution(rates: Sequence[float]) -> list[float]:
    """P(X = j) for j = 0..K, from P(X >= j) = rate_(j-1)."""
    at_least = [1.0, *rates, 0.0]
    return [at_least[j] - at_least[j + 1] for j in range(len(rates) + 1)]


def _mean_and_se(values: Sequence[float], probabilities: Sequence[float], drafts: float) -> tuple[float, float]:
    mean = sum(p * v for p, v in zip(probabilities, values, strict=True))
    second = sum(p * v * v for p, v in zip(probabilities, values, strict=True))
    return mean, math.sqrt(max(second - mean * mean, 0.0) / drafts)


def _option(rates: Sequence[float], k: int, best: int, c: float, drafts: float) -> KOption:
    probabilities = _distribution(rates)
    accepted = range(len(rates) + 1)
    per_draft = [(1 + min(x, k)) / (1 + k * c) for x in accepted]
    speedup, se = _mean_and_se(per_draft, probabilities, drafts)
    versus = [v - (1 + min(x, best)) / (1 + best * c) for v, x in zip(per_draft, accepted, strict=True)]
    diff, diff_se = _mean_and_se(versus, probabilities, drafts)
    if k == best:
        diff, diff_se = 0.0, 0.0
    length = 1.0 + sum(rates[:k])
    return KOption(
        k=k,
        mean_acceptance_length=length,
        acceptance_ratio=(length - 1.0) / k,
        speedup=speedup,
        speedup_low=speedup - Z95 * se,
        speedup_high=speedup + Z95 * se,
        versus_best=diff,
        versus_best_low=diff - Z95 * diff_se,
        versus_best_high=diff + Z95 * diff_se,
    )


def for_model(m: ModelStats, measured: MeasuredSpeedup | None = None) -> RightSize | None:
    """The window's recommendation for one model (None with speculation off, or no per-position counters)."""
    if not m.speculation:
        return None
    cost, interval = draft_cost_for(m.draft_cost, measured)
    return right_size(m.position_acceptance, m.drafts, cost, cost_interval=interval)


def right_size_json(size: RightSize | None) -> dict[str, Any] | None:
    """``report --json`` / ``/api/report``: the recommendation, its bounds and each K's expected speedup."""
    if size is None:
        return None
    return {
        "current": size.current_k,
        "recommended": size.recommended_k,
        "low": size.low,
        "high": size.high,
        "distinguishable": size.distinguishable,
        "expected_speedup": size.recommended.speedup,
        "expected_speedup_at_current": size.current.speedup,
        "draft_cost": {"ratio": size.cost.ratio, "source": str(size.cost.source), "basis": size.cost.basis},
        "per_k": [
            {
                "k": o.k,
                "mean_acceptance_length": o.mean_acceptance_length,
                "acceptance_ratio": o.acceptance_ratio,
                "expected_speedup": o.speedup,
                "interval": [o.speedup_low, o.speedup_high],
                "plausible": o.plausible,
            }
            for o in size.options
        ],
        "words": size.words,
    }
