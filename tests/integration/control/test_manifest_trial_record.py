"""A passed timed trial recorded in a real manifest file (--deployment-file), end to end through the controller:
off on low acceptance, back on for a trial, the pass written as annotations only, and a restarted sidecar that
keeps speculation on at traffic a second trial would have failed. Also kill -9 while the record is written."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.policy import Action, Observation, PolicyConfig, PolicyState, Reason, TrialConfig, decide
from tests.support.manifest_files import LIST_MANIFEST, load_all, without_our_annotations
from tests.support.stats_builders import stats
from tests.support.trial_records import PASSED, STARTED, T0

ROOT = Path(__file__).parents[3]
CONFIG = PolicyConfig(trial=TrialConfig(after=1800, max_tries=3, windows=3))


def controller(path: Path, config: PolicyConfig = CONFIG) -> Controller:
    return Controller(ManifestActuator(path, container="vllm", clock=lambda: T0), config, read_every=0.0)


def through_a_passed_trial(path: Path, config: PolicyConfig = CONFIG) -> tuple[Controller, float]:
    """Three low windows turn speculation off; 30 minutes later a trial turns it on; three good windows pass."""
    loop = controller(path, config)
    for i in range(3):
        loop.step(stats(0.3), T0 + 60 * i)
    now = T0 + 180
    while now <= T0 + 120 + 1800:  # the engine restarted without speculation: no speculation series
        loop.step(stats(0.3, speculation=False), now)
        now += 60
    for _ in range(3):
        loop.step(stats(0.6), now)
        now += 60
    return loop, now


def test_a_passed_trial_is_written_to_the_file_as_annotations_only(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    loop, _ = through_a_passed_trial(path)
    outcomes = [(r.action, r.reason, r.outcome) for r in loop.decisions]
    assert outcomes == [
        ("disable", "low_acceptance", "changed"),
        ("enable", "trial_start", "changed"),
        ("record", "trial_passed", "changed"),
    ]
    text = path.read_text()
    assert without_our_annotations(text) == LIST_MANIFEST  # args, comments and layout as the trial left them
    notes = load_all(path)[1]["metadata"]["annotations"]  # type: ignore[index]
    assert (notes[ann.STATE], notes[ann.REASON], notes[ann.CHANGED_BY]) == ("on", "trial_passed", "sidecar")
    assert ann.TRIAL not in notes  # the trial counters reset
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["disable", "enable"]  # the pass is no toggle


def test_a_restarted_sidecar_reading_the_file_keeps_speculation_on_at_healthy_traffic(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    _, now = through_a_passed_trial(path)
    written = path.read_text()
    restarted = controller(path)  # a new process: nothing in memory
    decisions = [restarted.step(stats(0.52), now + 60 * i) for i in range(15)]
    assert {d.reason for d in decisions if d is not None} == {Reason.HEALTHY}
    assert path.read_text() == written and not restarted.decisions


def test_the_same_restart_without_the_record_would_have_failed_a_second_trial(tmp_path: Path) -> None:
    """The control case: the file as the trial start left it, read by a restarted sidecar at the same traffic."""
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    loop = controller(path)
    for i in range(3):
        loop.step(stats(0.3), T0 + 60 * i)
    now = T0 + 180
    while not loop.actuator.read().speculation:
        loop.step(stats(0.3, speculation=False), now)
        now += 60
    restarted = controller(path)
    for i in range(15):
        restarted.step(stats(0.52), now + 60 * i)
    assert [(r.action, r.reason) for r in restarted.decisions] == [("disable", "trial_failed")]


def test_a_dry_run_passes_the_trial_in_memory_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    notes = ann.to_annotations(
        ControlRecord(state="on", reason="trial_start", changed_at=T0, changed_by=By.SIDECAR, trial_attempts=1)
    )
    block = "".join(f"    {k}: '{v}'\n" for k, v in notes.items() if v is not None)
    path.write_text(LIST_MANIFEST.replace("    team: ml\n", "    team: ml\n" + block))
    original = path.read_text()
    loop = controller(path, replace(CONFIG, dry_run=True))
    reasons = [loop.step(stats(0.6), T0 + 100 + 60 * i) for i in range(5)]
    assert [d.reason for d in reasons if d is not None][2] is Reason.TRIAL_PASSED
    assert path.read_text() == original and +loop.toggle_counts == {}


# --- kill -9 while the pass is being recorded ---------------------------------------------------------------

WRITER = """
import sys
from sidecar.adapters.manifest import ManifestActuator
from tests.support.trial_records import PASSED, STARTED
act = ManifestActuator(sys.argv[1], container="vllm")
while True:  # record the pass, and put the trial start back, as fast as it can
    act.write_record(PASSED, "record")
    act.write_record(STARTED, "record")
"""


def test_kill_9_while_recording_leaves_the_trial_start_or_the_pass_never_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    assert ManifestActuator(path, container="vllm").write_record(STARTED, "record").changed
    rng = random.Random(5)
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT)
        time.sleep(rng.uniform(1.2, 1.8))  # imports take about a second, then it writes as fast as it can
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        view = ManifestActuator(path, container="vllm").read()
        assert view.speculation and view.record in (STARTED, PASSED)
        # What a restarted sidecar makes of it: at worst the trial is judged again; never speculation off
        # from a state nobody wrote.
        state = PolicyState(speculation=True, record=view.record)
        first = decide(Observation(True, True, 0.6, 5000.0, window_seconds=60.0), state, CONFIG, T0 + 100)
        expected = Reason.TRIAL_RUNNING if view.record == STARTED else Reason.HEALTHY
        assert (first.action, first.reason) == (Action.NONE, expected)
    assert without_our_annotations(path.read_text()) == LIST_MANIFEST
