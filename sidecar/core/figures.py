"""How a number is written for people, in the terminal and on /status: an unknown one is "—", never 0."""

from __future__ import annotations

import math

UNKNOWN = "—"


def fixed(value: float | None, digits: int = 3) -> str:
    """``0.712``; unknown or not finite: "—"."""
    return UNKNOWN if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def count(value: float | None) -> str:
    """A whole count with thousands separators: ``12,345``."""
    return UNKNOWN if value is None else f"{value:,.0f}"


def percent(value: float | None) -> str:
    """A fraction as a whole percentage: ``0.42`` is ``42%``."""
    return UNKNOWN if value is None or not math.isfinite(value) else f"{value:.0%}"
