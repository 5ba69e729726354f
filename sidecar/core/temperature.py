"""Temperature buckets: which label a request's sampling temperature is counted under.

Greedy decoding (temperature 0) behaves so differently for speculation that it always has its own bucket "0".
Positive temperatures fall into half-open intervals cut at the configured edges, labelled in interval notation
so a label never leaves doubt about where a boundary value went: edges (0.3, 0.7, 1) give "(0,0.3)",
"[0.3,0.7)", "[0.7,1)" and "[1,+Inf)". A request that omits the temperature gets the model's default, which
the tap cannot see, so it is counted under "default".
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

ZERO = "0"
DEFAULT = "default"
INVALID = "invalid"
DEFAULT_EDGES: tuple[float, ...] = (0.3, 0.7, 1.0)


def parse_edges(text: str) -> tuple[float, ...]:
    """ "0,0.3,0.7,1.0,2.0" → (0.3, 0.7, 1.0, 2.0). Zero is implied (it is always its own bucket)."""
    values: list[float] = []
    for part in text.split(","):
        stripped = part.strip()
        if not stripped:
            continue
        try:
            value = float(stripped)
        except ValueError:
            raise ValueError(f"temperature bucket edge {stripped!r} is not a number") from None
        values.append(value)
    return normalize_edges(values)


def normalize_edges(values: Iterable[float]) -> tuple[float, ...]:
    edges: set[float] = set()
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"temperature bucket edge {value} must be a finite number >= 0")
        if value > 0:
            edges.add(value)
    return tuple(sorted(edges))


def _fmt(value: float) -> str:
    return format(value, "g")


@dataclass(frozen=True)
class TemperatureBuckets:
    edges: tuple[float, ...] = DEFAULT_EDGES

    def __post_init__(self) -> None:
        if self.edges != normalize_edges(self.edges):
            raise ValueError(f"edges must be positive, finite, sorted and unique: {self.edges}")

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label this configuration can give, in temperature order (not counting "invalid")."""
        return (ZERO, *(self._interval_label(i) for i in range(len(self.edges) + 1)), DEFAULT)

    def label_for(self, temperature: float | None) -> str:
        if temperature is None:
            return DEFAULT
        if math.isnan(temperature) or temperature < 0:
            return INVALID
        if temperature == 0:
            return ZERO
        return self._interval_label(bisect.bisect_right(self.edges, temperature))

    def _interval_label(self, index: int) -> str:
        low = "(0" if index == 0 else f"[{_fmt(self.edges[index - 1])}"
        high = "+Inf)" if index == len(self.edges) else f"{_fmt(self.edges[index])})"
        return f"{low},{high}"
