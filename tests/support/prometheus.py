"""The real Prometheus server (Debian, installed by scripts/install-prometheus.sh) on 127.0.0.1, for tests.

``run_prometheus`` writes a config, starts the server on a free port with its own TSDB under the test's
temporary directory, waits for /-/ready, and stops it (terminate, then kill) on exit. ``server_process`` is
the same start/ready/stop discipline for any server binary (Alertmanager too).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.replay import free_port
from tests.support.sidecar_process import stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def install_prometheus() -> None:
    """Idempotent and cached: a second call (or run, once installed) returns at once."""
    subprocess.run(["bash", str(ROOT / "scripts" / "install-prometheus.sh")], check=True, capture_output=True)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def server_process(
    cmd: Sequence[str], ready_url: str, log: Path, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answers(ready_url), timeout, lambda: f"{cmd[0]} at {ready_url}\n{_tail(log)}")
        yield process
    finally:
        stop_process(process)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def static_job(name: str, targets: Mapping[str, Mapping[str, str]], interval: str = "1s") -> dict[str, Any]:
    """A scrape job over ``{host:port: target labels}`` (e.g. the namespace and pod a ServiceMonitor adds)."""
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": [t], "labels": dict(labels)} for t, labels in targets.items()],
    }


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        return list(response["data"]["result"])

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def run_prometheus(directory: Path, scrape_configs: Sequence[Mapping[str, Any]], **config: Any) -> Iterator[Prometheus]:
    """``config`` adds top-level keys (rule_files, alerting, global) to the generated prometheus.yml."""
    install_prometheus()
    port = free_port()
    path = directory / "prometheus.yml"
    document = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **config}
    document["scrape_configs"] = [dict(c) for c in scrape_configs]
    path.write_text(yaml.safe_dump(document))
    cmd = [
        "prometheus",
        f"--config.file={path}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url + "/-/ready", directory / "prometheus.log") as process:
        yield Prometheus(url, process)
