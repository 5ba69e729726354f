"""At most one running engine at a time: the machine has 2 cores and each server binds both."""

from __future__ import annotations

from pathlib import Path

from tests.engine.flavours import Flavour
from tests.engine.server import Engine


class EngineManager:
    def __init__(self, log_dir: Path | None = None) -> None:
        self._log_dir = log_dir
        self._current: Engine | None = None

    @property
    def current(self) -> Engine | None:
        return self._current

    def get(self, flavour: Flavour) -> Engine:
        """The running engine if it serves `flavour`; otherwise stops it and starts one that does."""
        current = self._current
        if current is not None and current.flavour == flavour and current.running:
            return current
        self.stop()
        engine = Engine(flavour, self._log_dir)
        engine.start()
        self._current = engine
        return engine

    def restart(self) -> Engine:
        """A fresh process for the current flavour: counters start again from 0."""
        assert self._current is not None, "nothing to restart"
        flavour = self._current.flavour
        self.stop()
        return self.get(flavour)

    def stop(self) -> None:
        if self._current is not None:
            self._current.stop()
            self._current = None
