"""The sidecar app with its tap, served by real uvicorn in a subprocess, for the tap's integration tests.

It builds the lead's app (``sidecar.app.create_app``: /metrics, /healthz, ...). If that app does not mount the
tap itself yet, the tap is installed here the way the app is meant to: last, with its collector registered in
the sidecar's registry. Settings come from ``SPEC_SIDECAR_*`` environment variables, as for ``spec-sidecar run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.replay import free_port
from tests.support.sidecar_process import wait_until


@dataclass
class TapServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def tap_server(tmp_path: Path, upstream_url: str, **env: str) -> Iterator[TapServer]:
    port = free_port()
    log_path = tmp_path / f"tap-{port}.log"
    cmd = [sys.executable, "-m", "tests.support.tap_server", upstream_url, str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    server = TapServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until(lambda: _answers(server.url), 30, server.log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    import uvicorn

    from sidecar.app import create_app
    from sidecar.core.temperature import TemperatureBuckets, parse_edges
    from sidecar.settings import Settings
    from sidecar.tap import TapConfig, install_tap
    from sidecar.tap_metrics import TapRecorder

    upstream, port = sys.argv[1], int(sys.argv[2])
    # Everything else comes from SPEC_SIDECAR_* in the environment, as for `spec-sidecar run`.
    settings = Settings(vllm_url=upstream, listen=f"127.0.0.1:{port}")
    app = create_app(settings)
    if not hasattr(app.state, "tap"):
        config = TapConfig(
            upstream_url=upstream,
            max_body_bytes=settings.tap_max_body_bytes,
            temperature_buckets=TemperatureBuckets(parse_edges(settings.temperature_buckets)),
            ask_for_usage=settings.tap_ask_for_usage,
            estimate_from_chunks=settings.tap_estimate_from_chunks,
        )
        recorder = TapRecorder(window_seconds=config.window_seconds)
        app.state.sidecar.registry.register(recorder.collector())
        install_tap(app, config, recorder)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
