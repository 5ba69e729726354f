"""The decision loop on a real manifest: the measured break-even replaces the fixed threshold once established,
and the draft cost is assumed from the speculative config the manifest's args name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.core.cost_prior import CostSource, compute_ratio
from sidecar.core.measured_speedup import SpeedSample, with_samples
from sidecar.core.policy import Action, Reason
from sidecar.settings import Settings
from sidecar.wiring import Sidecar, build_sidecar
from tests.support.stats_builders import T0, stats

TARGET = {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1376, "vocab_size": 32000,
          "hidden_act": "silu"}  # fmt: skip
DRAFT = {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 688, "vocab_size": 32000,
         "hidden_act": "silu"}  # fmt: skip


def manifest(tmp_path: Path) -> Path:
    for name, config in (("target", TARGET), ("draft", DRAFT)):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    spec = json.dumps({"method": "draft_model", "model": str(tmp_path / "draft"), "num_speculative_tokens": 4})
    path = tmp_path / "deploy.yaml"
    path.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: llm\nspec:\n  template:\n    spec:\n"
        "      containers:\n        - name: vllm\n          image: vllm/vllm-openai\n"
        f"          args: [--model, {tmp_path / 'target'}, --speculative-config, '{spec}']\n"
    )
    return path


def sidecar_on(path: Path) -> Sidecar:
    settings = Settings(deployment_file=str(path), warmup_windows=0, trip_windows=1, min_draft_tokens=100, window=60)
    return build_sidecar(settings)


def learned(sidecar: Sidecar, tpot_on: float, tpot_off: float) -> None:
    """Six windows of each state at the same load, L = 2.6 and k = 4 (as the scrape loop would learn them)."""
    samples = [
        SpeedSample(float(i), True, 3.0, tpot_on, 60.0, mean_acceptance_length=2.6, num_speculative_tokens=4)
        for i in range(6)
    ] + [SpeedSample(float(i), False, 3.0, tpot_off, 60.0) for i in range(6)]
    view = sidecar.monitor.view
    sidecar.monitor.view = replace(view, speed=with_samples(view.speed, "tiny", samples))


def test_the_draft_cost_is_assumed_from_the_draft_models_config_the_manifest_names(tmp_path: Path) -> None:
    sidecar = sidecar_on(manifest(tmp_path))
    assert sidecar.monitor.config.draft_cost.source is CostSource.UNKNOWN  # nothing read yet
    assert sidecar.controller is not None
    sidecar.controller.step(stats(0.7), T0)
    cost = sidecar.monitor.config.draft_cost
    assert cost.source is CostSource.ASSUMED
    # A half-width, quarter-depth draft with the same vocabulary: its LM head keeps it near a quarter of the target.
    assert cost.ratio == pytest.approx(compute_ratio(DRAFT, TARGET))
    assert 0.2 < cost.ratio < 0.3


def test_acceptance_below_the_fixed_threshold_but_above_the_measured_break_even_keeps_speculation(
    tmp_path: Path,
) -> None:
    # Measured: TPOT 40 ms with speculation, 52 ms without: S = 1.3, c_eff = (2.6 / 1.3 - 1) / 4 = 0.25.
    path = manifest(tmp_path)
    before = path.read_text()
    sidecar = sidecar_on(path)
    learned(sidecar, tpot_on=0.040, tpot_off=0.052)
    assert sidecar.controller is not None
    decision = sidecar.controller.step(stats(0.35), T0)
    assert decision is not None
    assert decision.reason is Reason.HEALTHY, decision.detail
    assert path.read_text() == before


def test_without_the_measurement_the_same_window_turns_speculation_off_at_the_fixed_threshold(
    tmp_path: Path,
) -> None:
    path = manifest(tmp_path)
    sidecar = sidecar_on(path)
    assert sidecar.controller is not None
    decision = sidecar.controller.step(stats(0.35), T0)
    assert decision is not None and decision.action is Action.DISABLE
    assert "spec-sidecar.io/state: 'off'" in path.read_text() or "spec-sidecar.io/state: off" in path.read_text()


def test_a_measured_break_even_above_the_threshold_turns_speculation_off_where_the_fixed_rule_would_not(
    tmp_path: Path,
) -> None:
    # Measured: 60 ms per token with speculation, 40 without: S = 0.667, c_eff = (2.6 / 0.667 - 1) / 4 = 0.725.
    fixed = sidecar_on(manifest(tmp_path / "fixed"))
    assert fixed.controller is not None
    kept = fixed.controller.step(stats(0.55, drafts=2500.0), T0)
    assert kept is not None and kept.reason is Reason.HEALTHY
    slower = sidecar_on(manifest(tmp_path / "slower"))
    learned(slower, tpot_on=0.060, tpot_off=0.040)
    assert slower.controller is not None
    off = slower.controller.step(stats(0.55, drafts=2500.0), T0)
    assert off is not None
    assert off.action is Action.DISABLE, off.detail


def test_the_windows_survive_the_restart_a_toggle_causes_through_the_targets_record(tmp_path: Path) -> None:
    """On Kubernetes every toggle restarts the pod and this sidecar with it: the windows with speculation on
    travel in the disable's patch, and the next sidecar measures against them once it has windows off."""
    path = manifest(tmp_path)
    first = sidecar_on(path)
    on_only = [
        SpeedSample(float(i), True, 3.0, 0.040, 60.0, mean_acceptance_length=2.6, num_speculative_tokens=4)
        for i in range(6)
    ]
    first.monitor.view = replace(first.monitor.view, speed=with_samples(first.monitor.view.speed, "tiny", on_only))
    assert first.controller is not None
    disabled = first.controller.step(stats(0.3), T0)
    assert disabled is not None and disabled.action is Action.DISABLE
    assert "spec-sidecar.io/speed" in path.read_text()

    after_restart = sidecar_on(path)  # a new process: nothing in memory
    assert after_restart.controller is not None
    after_restart.controller.step(stats(0.0, speculation=False), T0 + 60)
    restored = after_restart.monitor.view.speed.on["tiny"]
    assert [(s.tpot, s.running, s.mean_acceptance_length, s.num_speculative_tokens) for s in restored] == [
        (0.040, 3.0, 2.6, 4)
    ] * 6
    off = [SpeedSample(float(i), False, 3.0, 0.052, 60.0) for i in range(6)]
    view = after_restart.monitor.view
    after_restart.monitor.view = replace(view, speed=with_samples(view.speed, "tiny", off))
    measured = after_restart.monitor.view.measured("tiny")
    assert measured is not None and measured.established
    assert measured.draft_cost == pytest.approx(0.25, abs=1e-3)  # (2.6 / 1.3 - 1) / 4
