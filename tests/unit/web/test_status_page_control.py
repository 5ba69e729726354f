"""/status fed by the real decision loop: the Controller over the manifest actuator on a temporary YAML file."""

from __future__ import annotations

from pathlib import Path

from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core.policy import PolicyConfig
from sidecar.web.status_data import actuator_state_of
from sidecar.web.status_page import render_status
from tests.support.manifest_files import LIST_MANIFEST
from tests.support.stats_builders import T0, stats
from tests.support.status_pages import page


def controller(tmp_path: Path) -> Controller:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    return Controller(ManifestActuator(path, container="vllm", clock=lambda: T0), PolicyConfig(), read_every=0.0)


def test_before_the_first_read_the_target_is_named_and_its_state_unknown(tmp_path: Path) -> None:
    state = actuator_state_of(controller(tmp_path))
    assert state.target.startswith("file:") and "deploy.yaml" in state.target
    assert state.speculation is None and state.state == "unknown"


def test_a_disable_by_the_loop_shows_as_target_off_and_in_the_history(tmp_path: Path) -> None:
    loop = controller(tmp_path)
    loop.step(stats(0.8), T0)
    assert actuator_state_of(loop).speculation is True
    for i in range(1, 4):
        loop.step(stats(0.3), T0 + 60 * i)
    loop.step(stats(0.3, speculation=False), T0 + 240)  # the next window reads the rewritten target
    state = actuator_state_of(loop, dry_run=False)
    assert (state.speculation, state.state) == (False, "off")
    html = render_status(page(actuator=state, decisions=tuple(loop.decisions)))
    assert "actuator: not configured" not in html
    assert "low_acceptance" in html and "changed" in html
    assert html.count("<td>disable</td>") == 1


def test_dry_run_is_said_next_to_the_state(tmp_path: Path) -> None:
    loop = controller(tmp_path)
    loop.step(stats(0.8), T0)
    assert actuator_state_of(loop, dry_run=True).state == "on (dry run: nothing is written)"
