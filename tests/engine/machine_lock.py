"""One vLLM engine per machine across processes: concurrent pytest sessions on 2 cores starve each other
into start-up timeouts, so a manager holds this file lock while its engine runs."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO

from tests.engine.provision import cache_root

# Below pytest-timeout (900 s per test) so a long wait fails with this message, not a bare timeout.
WAIT_SECONDS = float(os.environ.get("SPEC_SIDECAR_ENGINE_LOCK_WAIT", "800"))
POLL_SECONDS = 1.0


class EngineLockTimeoutError(RuntimeError):
    """Another process kept its engine running for longer than we were willing to wait."""


class MachineEngineLock:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_root() / "engine.lock"
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, wait: float = WAIT_SECONDS) -> None:
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise EngineLockTimeoutError(f"{self.path} still held after {wait:.0f} s") from None
                if not announced:
                    print(f"waiting for another process's vLLM engine ({self.path})", file=sys.stderr)
                    announced = True
                time.sleep(POLL_SECONDS)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
