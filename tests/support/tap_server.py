"""The real `spec-sidecar run` (tap included) in a subprocess, for the tap's integration tests.

A thin wrapper over tests.support.sidecar_process: settings come from SPEC_SIDECAR_* environment variables
given as keyword arguments, as an operator would set them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.sidecar_process import SidecarProcess, run_sidecar

TapServer = SidecarProcess


@contextmanager
def tap_server(tmp_path: Path, upstream_url: str, **env: str) -> Iterator[TapServer]:
    with run_sidecar(tmp_path, "--vllm-url", upstream_url, env=env) as server:
        yield server
