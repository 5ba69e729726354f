"""Acceptance numbers from windowed counter increases, and the Leviathan et al. speedup model.

Definitions are vLLM's own (docs/math.md#acceptance):
  acceptance ratio = accepted / draft tokens
  mean acceptance length L = 1 + accepted / drafts      (includes the bonus token)
  per-position rate_i = accepted_at_position_i / drafts  (≈ α^(i+1)); α̂ = rate_0
Speculation pays iff L > 1 + k·c, c = draft cost / target cost per step; expected speedup = L / (1 + k·c).
Every function returns None where the inputs cannot give a number: None is "unknown", never 0.
"""

from __future__ import annotations

from collections.abc import Sequence


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def mean_acceptance_length(accepted: float | None, drafts: float | None) -> float | None:
    per_draft = ratio(accepted, drafts)
    return None if per_draft is None else 1.0 + per_draft


def position_acceptance(per_position: Sequence[float], drafts: float | None) -> tuple[float, ...]:
    if drafts is None or drafts <= 0:
        return ()
    return tuple(accepted / drafts for accepted in per_position)


def breakeven_acceptance_length(k: int | None, draft_cost_ratio: float) -> float | None:
    """The L at which speculation neither helps nor hurts: 1 + k·c."""
    if k is None or k <= 0:
        return None
    return 1.0 + k * draft_cost_ratio


def expected_speedup(length: float | None, k: int | None, draft_cost_ratio: float) -> float | None:
    """Expected walltime improvement: tokens per target step over the cost of one step with k drafts."""
    if length is None or k is None or k <= 0:
        return None
    return length / (1.0 + k * draft_cost_ratio)


def iid_acceptance_ratio(alpha: float, k: int) -> float:
    """The acceptance ratio an i.i.d. per-token acceptance α gives with k drafts: α(1-α^k)/(k(1-α)).

    It is why the ratio is not the paper's α: with the same draft quality it falls as k grows.
    """
    if alpha >= 1.0:
        return 1.0
    return alpha * (1 - alpha**k) / (k * (1 - alpha))


def expected_length(alpha: float, k: int) -> float:
    """Expected tokens per target step under i.i.d. acceptance: (1 - α^(k+1)) / (1 - α)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)
