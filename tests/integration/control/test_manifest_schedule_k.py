"""schedule-k on a local manifest: the control loop writes the measured load schedule of K into the file's
speculative config, ``enable`` gives back the file byte for byte (apart from our annotations) in every spelling,
and an engine that would ignore or refuse the schedule is left alone with a message that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core import schedule_config
from sidecar.core.actuator import Outcome
from sidecar.core.policy import Action, PolicyConfig
from sidecar.core.stats import Stats
from tests.integration.control.test_manifest_reduce_k import manifest
from tests.support.manifest_files import LIST_MANIFEST, load_all, without_our_annotations
from tests.support.stats_builders import BASE, T0
from tests.unit.core.test_load_schedule import windows
from tests.unit.core.test_spec_tokens import SPELLINGS

# Speculation pays at batch sizes 1 and 2 and hurts at 5-8, measured from TPOT with it on and off.
LOAD_DEPENDENT = windows(1, 1.6) + windows(2, 1.4) + windows(6, 0.8)
WINDOW = Stats("vllm", (BASE,), 60.0)  # passing: acceptance 0.75, k = 4
SCHEDULE = ((1, 2, 4), (3, 256, 0))
SCHEDULABLE = sorted(name for name in SPELLINGS if not name.startswith("legacy"))


def controller(path: Path) -> tuple[Controller, ManifestActuator]:
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    return Controller(act, PolicyConfig(schedule_k=True), samples_for=lambda _m: LOAD_DEPENDENT, read_every=0.0), act


def test_the_loop_writes_the_measured_schedule_into_the_file_and_enable_takes_it_out(tmp_path: Path) -> None:
    _, args = SPELLINGS["JSON value"]
    assert args is not None
    path = manifest(tmp_path, None, [*args, "--max-num-seqs", "32"])
    original = path.read_text()
    loop, act = controller(path)
    decision = loop.step(WINDOW, T0)
    assert decision is not None and decision.action is Action.SCHEDULE_K, decision
    assert "K = 4 up to batch size 2, 0 above" in decision.detail and "hurts at 5-8" in decision.detail
    assert [r.outcome for r in loop.decisions] == ["changed"]
    assert +loop.toggle_counts == {("schedule-k", "auto"): 1}
    view = act.read()
    assert view.speculation
    assert schedule_config.current_schedule(view.command, view.args) == [[1, 2, 4], [3, 32, 0]]  # --max-num-seqs
    notes = load_all(path)[0]["metadata"]["annotations"]  # type: ignore[index]
    assert json.loads(notes[ann.K_SCHEDULE])["value"] == [[1, 2, 4], [3, 32, 0]]
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["schedule-k"]
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()).replace("  annotations:\n", "") == original


@pytest.mark.parametrize("spelling", SCHEDULABLE)
def test_schedule_then_enable_restores_the_file_byte_for_byte_in_every_spelling(tmp_path: Path, spelling: str) -> None:
    command, args = SPELLINGS[spelling]
    path = manifest(tmp_path, command, args)
    original = path.read_text()
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    written = act.schedule_k(SCHEDULE, "manual")
    assert written.outcome is Outcome.CHANGED, written.detail
    view = act.read()
    assert schedule_config.current_schedule(view.command, view.args) == [list(r) for r in SCHEDULE]
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()).replace("  annotations:\n", "") == original


def test_an_engine_older_than_the_key_is_left_alone_and_the_loop_says_why(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)  # vllm/vllm-openai:v0.11.0
    loop, _act = controller(path)
    decision = loop.step(WINDOW, T0)
    assert decision is not None and decision.action is Action.SCHEDULE_K
    assert [r.outcome for r in loop.decisions] == ["not_schedulable"]
    assert path.read_text() == LIST_MANIFEST
    result = ManifestActuator(path, container="vllm", clock=lambda: T0).schedule_k(SCHEDULE, "manual")
    assert "vLLM 0.11.0" in result.detail and "no num_speculative_tokens_per_batch_size" in result.detail


def test_data_parallelism_is_refused_because_vllm_would_ignore_the_schedule(tmp_path: Path) -> None:
    _, args = SPELLINGS["--spec-tokens"]
    assert args is not None
    path = manifest(tmp_path, None, [*args, "-dp", "4"])
    before = path.read_text()
    result = ManifestActuator(path, container="vllm", clock=lambda: T0).schedule_k(SCHEDULE, "manual")
    assert result.outcome is Outcome.NOT_SCHEDULABLE
    assert "--data-parallel-size 4" in result.detail and "a schedule would change nothing" in result.detail
    assert path.read_text() == before
