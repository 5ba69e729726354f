"""Start the real `spec-sidecar run` as a subprocess on a free port, and read its /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.replay import free_port


@dataclass
class SidecarProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextmanager
def run_sidecar(
    tmp_path: Path, *flags: str, env: dict[str, str] | None = None, health_url: str | None = None
) -> Iterator[SidecarProcess]:
    """health_url: where /healthz answers, when not on the tap's port (--metrics-listen)."""
    sidecar = start_sidecar(tmp_path, *flags, env=env, health_url=health_url)
    try:
        yield sidecar
    finally:
        stop_process(sidecar.process, timeout=15)


def start_sidecar(
    tmp_path: Path, *flags: str, env: dict[str, str] | None = None, health_url: str | None = None
) -> SidecarProcess:
    """Start one and wait until it answers /healthz; the caller stops it (``stop_process``)."""
    port = free_port()
    log_path = tmp_path / f"sidecar-{port}.log"
    cmd = [sys.executable, "-m", "sidecar.cli", "run", "--listen", f"127.0.0.1:{port}", *flags]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    sidecar = SidecarProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until(lambda: _answers(health_url or sidecar.url), 30, sidecar.log)
    except BaseException:
        stop_process(process, timeout=15)
        raise
    return sidecar


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns once the process is reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: object, timeout: float, describe: object = None, interval: float = 0.2) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    detail = describe() if callable(describe) else ""
    raise AssertionError(f"condition not met within {timeout}s\n{detail}")
