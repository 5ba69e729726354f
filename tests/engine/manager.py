"""At most one running engine at a time: the machine has 2 cores and each server binds both.

Within a process the manager stops the previous engine before starting another; across processes (other
pytest sessions, the capture script) it holds a machine-wide file lock while its engine runs."""

from __future__ import annotations

from pathlib import Path

from tests.engine.flavours import Flavour
from tests.engine.machine_lock import MachineEngineLock
from tests.engine.server import Engine, EngineStartError


class EngineManager:
    def __init__(self, log_dir: Path | None = None) -> None:
        self._log_dir = log_dir
        self._current: Engine | None = None
        self._lock = MachineEngineLock()

    @property
    def current(self) -> Engine | None:
        return self._current

    def get(self, flavour: Flavour, port: int | None = None) -> Engine:
        """The running engine if it serves `flavour`; otherwise stops it and starts one that does (on `port`,
        when given: e.g. the previous engine's, so that whoever watches that URL sees a restart)."""
        current = self._current
        if current is not None and current.flavour == flavour and current.running and port in (None, current.port):
            return current
        self._stop_engine()
        self._lock.acquire()
        try:
            engine = self._start(flavour, port)
        except BaseException:
            self._lock.release()
            raise
        self._current = engine
        return engine

    def _start(self, flavour: Flavour, port: int | None) -> Engine:
        # The free port is picked before vLLM binds it; if another process took it meanwhile, pick again once
        # (a port asked for is not changed: the caller wants that URL).
        try:
            return Engine(flavour, self._log_dir, port).start()
        except EngineStartError as error:
            if port is not None or "address already in use" not in str(error).lower():
                raise
            return Engine(flavour, self._log_dir).start()

    def restart(self) -> Engine:
        """A fresh process for the current flavour: counters start again from 0."""
        assert self._current is not None, "nothing to restart"
        flavour = self._current.flavour
        self._stop_engine()  # keeps the machine lock: no other process slips in between
        return self.get(flavour)

    def stop(self) -> None:
        self._stop_engine()
        self._lock.release()

    def _stop_engine(self) -> None:
        if self._current is not None:
            self._current.stop()
            self._current = None
