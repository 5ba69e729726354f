"""The window of snapshots, and what one scrape does to it: the big part of the scrape loop's state.

A snapshot of a hostile scrape can hold hundreds of thousands of objects; the Stats made from a window of them are
a few numbers per model. ``SnapshotWindow.step`` keeps the snapshots and hands back only the small part (a
``WindowStep``), so the running sidecar can keep the window in its parse worker (sidecar/scrape/worker.py) and
the event loop's process never holds more than the Stats.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, Stats, compute_stats
from sidecar.core.window import count_resets
from sidecar.scrape.fetch import ScrapeResult


@dataclass(frozen=True)
class WindowStep:
    """One scrape's outcome without its snapshot: the result (``snapshot`` None even on success), the window's
    Stats after it (None after a failed scrape), and the engine series seen restarting since the previous one."""

    result: ScrapeResult
    stats: Stats | None = None
    restarts: int = 0
    engine: str | None = None


class SnapshotWindow:
    """The snapshots of the last ``window_seconds``, plus the newest one before, so the window spans it all."""

    def __init__(self) -> None:
        self._history: deque[Snapshot] = deque()

    def step(self, result: ScrapeResult, now: float, window_seconds: float, config: AnalysisConfig) -> WindowStep:
        snapshot = result.snapshot
        if snapshot is None:
            return WindowStep(result)
        restarts = count_resets(self._history[-1], snapshot) if self._history else 0
        self._history.append(snapshot)
        start = now - window_seconds
        while len(self._history) >= 2 and (self._history[1].taken_at or 0.0) <= start:
            self._history.popleft()
        # Always a window: one snapshot alone is compared with itself (no increase yet), never with engine start.
        history = list(self._history)
        stats = compute_stats(history if len(history) > 1 else history * 2, config)
        return WindowStep(replace(result, snapshot=None), stats, restarts, snapshot.engine)
