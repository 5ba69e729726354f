"""reduce-k on a local manifest: the control loop lowers num_speculative_tokens in the file instead of removing
speculation, and ``enable`` gives back the file byte for byte (apart from our annotations), in every spelling."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core import spec_tokens
from sidecar.core.actuator import Outcome
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.policy import Action, PolicyConfig
from sidecar.core.stats import Stats
from tests.support.manifest_files import LIST_MANIFEST, load_all, without_our_annotations
from tests.support.stats_builders import BASE, T0
from tests.unit.core.test_spec_tokens import SPELLINGS

DRAFT_MODEL = DraftCost(0.16, CostSource.ASSUMED, "draft model /models/draft")


def steep(k: int = 4) -> Stats:
    """A window below the threshold overall (0.24 at k = 4) whose first position alone reads 0.8."""
    rates = (0.8, 0.12, 0.03, 0.01)[:k]
    model = replace(
        BASE,
        acceptance_ratio=sum(rates) / k,
        draft_tokens=BASE.drafts * k if BASE.drafts else None,
        position_acceptance=rates,
        num_speculative_tokens=k,
        mean_acceptance_length=1 + sum(rates),
        draft_cost=DRAFT_MODEL,
    )
    return Stats("vllm", (model,), 60.0)


def manifest(tmp_path: Path, command: list[str] | None, args: list[str] | None) -> Path:
    lines = ["apiVersion: apps/v1", "kind: Deployment", "metadata:", "  name: llm", "spec:", "  template:"]
    lines += ["    spec:", "      containers:", "        - name: vllm", "          image: vllm/vllm-openai:v0.32.0"]
    if command is not None:
        lines.append(f"          command: {json.dumps(command)}")
    if args is not None:
        lines.append(f"          args: {json.dumps(args)}")
    path = tmp_path / "deploy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_low_windows_with_a_paying_first_position_lower_k_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    controller = Controller(act, PolicyConfig(reduce_k=True), read_every=0.0)
    decisions = [controller.step(steep(), T0 + 60 * i) for i in range(3)]
    assert [d.action if d else None for d in decisions] == [Action.NONE, Action.NONE, Action.REDUCE_K]
    assert decisions[-1] is not None and "instead of turning speculation off" in decisions[-1].detail
    assert [r.outcome for r in controller.decisions] == ["changed"]
    view = act.read()
    assert view.speculation and spec_tokens.current_k(view.command, view.args) == 1
    text = path.read_text()
    assert '"num_speculative_tokens": 1}' in text and "# the target model" in text
    assert +controller.toggle_counts == {("reduce-k", "auto"): 1}
    # A human's enable puts the file back as it was, byte for byte apart from our annotations.
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()) == LIST_MANIFEST
    notes = load_all(path)[1]["metadata"]["annotations"]  # type: ignore[index]
    assert ann.REDUCED_K not in notes


def test_without_the_opt_in_the_same_windows_remove_speculation(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    controller = Controller(ManifestActuator(path, container="vllm", clock=lambda: T0), PolicyConfig(), read_every=0)
    decisions = [controller.step(steep(), T0 + 60 * i) for i in range(3)]
    assert decisions[-1] is not None and decisions[-1].action is Action.DISABLE


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_reduce_then_enable_restores_the_file_byte_for_byte_in_every_spelling(tmp_path: Path, spelling: str) -> None:
    command, args = SPELLINGS[spelling]
    path = manifest(tmp_path, command, args)
    original = path.read_text()
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    lowered = act.reduce_k(2, "manual")
    assert lowered.outcome is Outcome.CHANGED, lowered.detail
    view = act.read()
    assert spec_tokens.current_k(view.command, view.args) == 2
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()).replace("  annotations:\n", "") == original
