"""The operating rule for acceptance, as one pure function.

acceptance ratio >= 0.65: keep; 0.5-0.65: borderline (measure P99 under load); below 0.5: disable.
Too little evidence, or speculation off, is ``no-data``: never a verdict on noise. ``invalid`` (set by
sidecar.core.stats, not here) is a window of impossible numbers: no verdict on them either.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    KEEP = "keep"
    BORDERLINE = "borderline"
    DISABLE = "disable"
    NO_DATA = "no-data"
    # The window holds numbers no engine can produce (sidecar.core.validity): like no-data, never acted on.
    INVALID = "invalid"


@dataclass(frozen=True)
class Thresholds:
    disable_below: float = 0.5
    keep_from: float = 0.65
    min_draft_tokens: float = 200.0


def verdict(
    acceptance_ratio: float | None,
    evidence_tokens: float | None,
    speculation: bool,
    thresholds: Thresholds,
) -> Verdict:
    if not speculation or acceptance_ratio is None:
        return Verdict.NO_DATA
    if evidence_tokens is None or evidence_tokens < thresholds.min_draft_tokens:
        return Verdict.NO_DATA
    if acceptance_ratio >= thresholds.keep_from:
        return Verdict.KEEP
    if acceptance_ratio >= thresholds.disable_below:
        return Verdict.BORDERLINE
    return Verdict.DISABLE
