"""What to say beside a speedup: which number is modelled and which measured, on what c, and why a modelled
gain can sit beside a 'disable'.

The expected speedup L / (1 + k·c) counts tokens per verify step; with an assumed c (or none) it is an estimate,
and it leaves out what the acceptance threshold stands for (verifying k drafts is not free under batching, the
draft takes batch capacity). So a modelled speedup above 1 beside an acceptance below the threshold is never
shown bare: the sentence from :func:`caveat` says why, and the measured speedup when there is one. The report,
the /status page and the JSON all take their words from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedSample, band_label

# What the measured interval says, in words (MeasuredSpeedup.finding).
FINDING_WORDS = {
    "slower": "slower with speculation",
    "faster": "faster with speculation",
    "unclear": "no clear difference yet",
}


def expected_words(speedup: float | None, cost: DraftCost) -> str:
    """'1.378 (modelled; c = 0, unknown: upper bound)' — the expected speedup with its footing."""
    if speedup is None:
        return "—"
    unknown = cost.source is CostSource.UNKNOWN
    footing = cost.basis if unknown else f"{cost.label}: {cost.basis}" if cost.assumed else cost.label
    return f"{'at most ' if unknown else ''}{speedup:.3f} (modelled; {footing})"


def _footing(cost: DraftCost) -> str:
    if cost.source is CostSource.UNKNOWN:
        return "with the draft cost unknown (taken as 0: an upper bound)"
    return f"at {cost.label}"


def measured_words(measured: MeasuredSpeedup | None, samples: Sequence[SpeedSample] = ()) -> str:
    """'0.931 [0.880, 0.985], 12 on / 8 off windows at 1-2 running' or what is still missing (``samples``: the
    windows learned so far, to say how far along it is)."""
    if measured is None:
        on = sum(1 for s in samples if s.speculation)
        so_far = f" ({on} on, {len(samples) - on} off so far)" if samples else ""
        return f"not measured yet: needs windows with speculation on and off at the same load{so_far}"
    bands = ", ".join(band_label(b.band) for b in measured.bands)
    words = (
        f"{measured.speedup:.3f} [{measured.low:.3f}, {measured.high:.3f}] from {measured.on_windows} on / "
        f"{measured.off_windows} off windows at {bands} running requests: {FINDING_WORDS[measured.finding]}"
    )
    if not measured.established:
        words += f" (not yet in force: {measured.evidence_needed})"
    return words


def breakeven_words(measured: MeasuredSpeedup | None) -> str:
    """The acceptance at which this deployment breaks even, from latency: '0.31 [0.27, 0.35], c = 0.31'."""
    if measured is None or measured.breakeven_acceptance is None or measured.draft_cost is None:
        return "—"
    low, high = measured.breakeven_low, measured.breakeven_high
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{measured.breakeven_acceptance:.2f}{interval} (effective c = {measured.draft_cost:.3f})"


def caveat(
    expected: float | None,
    acceptance: float | None,
    threshold: float,
    cost: DraftCost,
    measured: MeasuredSpeedup | None,
) -> str | None:
    """Why a modelled speedup above 1 sits beside an acceptance below the threshold, or beside a measured speedup
    below 1 at any acceptance; None when it does not."""
    if expected is None or acceptance is None or expected <= 1.0:
        return None
    if acceptance >= threshold:
        if measured is None or measured.finding != "slower":
            return None
        # The acceptance passes the rule, but this engine's latency says speculation costs more than it gains here
        # (on a CPU, where verifying k tokens is not one step's price, it can at any acceptance).
        return (
            f"the modelled {expected:.2f}x counts only tokens per verify step, {_footing(cost)}; measured here: "
            f"{measured.speedup:.2f}x [{measured.low:.2f}, {measured.high:.2f}], slower with speculation at "
            f"acceptance {acceptance:.3f}"
        )
    words = (
        f"the modelled {expected:.2f}x counts only tokens per verify step, {_footing(cost)}; acceptance "
        f"{acceptance:.3f} is below {threshold:.2f}, where verifying rejected drafts and the batch room they take "
        "usually cost more than that gains"
    )
    if measured is not None and measured.high < 1.0:
        return words + f"; measured here: {measured.speedup:.2f}x, slower with speculation"
    if measured is not None:
        return words + f"; measured here: {measured.speedup:.2f}x [{measured.low:.2f}, {measured.high:.2f}]"
    return words + "; not measured yet, so trust the acceptance rule"


def e2e_words(measured: MeasuredSpeedup | None) -> str:
    """'P50 1.21x, P99 0.94x faster with speculation' from the e2e latency of the same windows, or '—'."""
    if measured is None or (measured.e2e_p50_ratio is None and measured.e2e_p99_ratio is None):
        return "—"
    parts = [
        f"{name} {value:.2f}x"
        for name, value in (("P50", measured.e2e_p50_ratio), ("P99", measured.e2e_p99_ratio))
        if value is not None
    ]
    return ", ".join(parts) + " (off / on: above 1, faster with speculation)"
