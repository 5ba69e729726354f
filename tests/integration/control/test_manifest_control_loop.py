"""The decision loop end to end on a local manifest: Stats in, the file rewritten, control metrics out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import ControlCollector, Controller
from sidecar.core import specargs
from sidecar.core.actuator import TargetView
from sidecar.core.policy import Action, PolicyConfig, Reason
from tests.support.manifest_files import LIST_MANIFEST
from tests.support.stats_builders import T0, stats


def setup(tmp_path: Path, **config: object) -> tuple[Path, Controller]:
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    actuator = ManifestActuator(path, container="vllm", clock=lambda: T0)
    return path, Controller(actuator, replace(PolicyConfig(), **config), read_every=0.0)  # type: ignore[arg-type]


def metrics(controller: Controller) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlCollector(controller))
    text = generate_latest(registry).decode()
    return {
        f.name: [(s.labels, s.value) for s in f.samples if not s.name.endswith("_created")]
        for f in text_string_to_metric_families(text)
    }


def test_three_low_windows_rewrite_the_manifest_without_speculation(tmp_path: Path) -> None:
    path, controller = setup(tmp_path)
    decisions = [controller.step(stats(0.3), T0 + 60 * i) for i in range(3)]
    assert [d.action if d else None for d in decisions] == [Action.NONE, Action.NONE, Action.DISABLE]
    view = controller.actuator.read()
    assert not view.speculation and view.record.reason == "low_acceptance"
    assert not specargs.speculation_configured(view.command, view.args)
    assert "# the target model" in path.read_text()
    assert [r.outcome for r in controller.decisions] == ["changed"]


def test_after_the_toggle_the_loop_holds_in_cooldown_and_counts_nothing_twice(tmp_path: Path) -> None:
    _, controller = setup(tmp_path)
    for i in range(3):
        controller.step(stats(0.3), T0 + 60 * i)
    # The engine restarted without speculation: its metrics have no speculation series any more.
    later = controller.step(stats(0.3, speculation=False), T0 + 240)
    assert later is not None and later.reason is Reason.SPECULATION_OFF
    assert +controller.toggle_counts == {("disable", "auto"): 1}  # unary +: the counts above 0


def test_dry_run_decides_and_counts_but_leaves_the_file_alone(tmp_path: Path) -> None:
    path, controller = setup(tmp_path, dry_run=True)
    for i in range(3):
        controller.step(stats(0.3), T0 + 60 * i)
    assert path.read_text() == LIST_MANIFEST
    assert +controller.toggle_counts == {("disable", "dry_run"): 1}  # unary +: the counts above 0


def test_control_metrics_have_the_documented_names_and_labels(tmp_path: Path) -> None:
    _, controller = setup(tmp_path)
    controller.step(stats(0.3), T0)
    tripping = metrics(controller)
    assert ({"state": "tripping"}, 1.0) in tripping["specdecode_decision_state"]
    assert tripping["specdecode_leader"] == [({}, 1.0)]
    for i in (1, 2):
        controller.step(stats(0.3), T0 + 60 * i)
    controller.step(stats(0.3, speculation=False), T0 + 180)
    after = metrics(controller)
    assert ({"state": "off"}, 1.0) in after["specdecode_decision_state"]
    assert ({"decision": "disable", "reason": "low_acceptance"}, 1.0) in after["specdecode_decisions"]
    assert ({"action": "disable", "mode": "auto"}, 1.0) in after["specdecode_toggles"]
    assert after["specdecode_last_toggle_timestamp_seconds"] == [({}, T0 + 120)]  # the third window


def test_an_unreadable_target_is_counted_and_the_loop_goes_on(tmp_path: Path) -> None:
    path, controller = setup(tmp_path)
    path.unlink()
    assert controller.step(stats(0.3), T0) is None
    assert controller.actuator_errors()["not_found"] == 1
    path.write_text(LIST_MANIFEST)
    assert controller.step(stats(0.3), T0 + 60) is not None


def test_a_manifest_deleted_between_the_read_and_the_write_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, controller = setup(tmp_path)
    for i in range(2):
        controller.step(stats(0.3), T0 + 60 * i)
    read = controller.actuator.read

    def read_then_lose_the_file() -> TargetView:
        view = read()
        path.unlink()  # a GitOps tool replacing the file, a person moving it
        return view

    monkeypatch.setattr(controller.actuator, "read", read_then_lose_the_file)
    decision = controller.step(stats(0.3), T0 + 120)
    assert decision is not None and decision.action is Action.DISABLE
    assert [r.outcome for r in controller.decisions] == ["error"]
    assert controller.actuator_errors()["not_found"] == 1
    assert list(tmp_path.iterdir()) == []


def test_the_controller_is_built_from_the_sidecars_own_settings(tmp_path: Path) -> None:
    from sidecar.settings import Settings
    from sidecar.wiring import build_controller, policy_config

    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    settings = Settings.model_validate(
        {"deployment_file": str(path), "threshold": 0.4, "trip_windows": 5, "cooldown": 30, "dry_run": True}
    )
    config = policy_config(settings)
    assert (config.threshold, config.trip_windows, config.cooldown, config.dry_run) == (0.4, 5, 30.0, True)
    assert config.window_seconds == settings.window and config.min_draft_tokens == settings.min_draft_tokens
    controller = build_controller(settings)
    assert controller is not None and isinstance(controller.actuator, ManifestActuator)
    assert controller.actuator.read().speculation
    assert build_controller(Settings.model_validate({})) is None  # no target: measure only


def test_a_refusal_that_will_not_change_backs_off_instead_of_retrying_every_scrape(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    pinned = LIST_MANIFEST.replace("    team: ml\n", "    team: ml\n    spec-sidecar.io/pin: 'on'\n")
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    path.write_text(pinned)
    assert act.disable("x").outcome.value == "pinned"  # a human may not either, while pinned on
    # Pinned on, but the flags are gone and nothing records them: every attempt would be refused the same way.
    lines = pinned.splitlines(keepends=True)
    path.write_text("".join(line for line in lines if "speculative" not in line and "per-request" not in line))
    controller = Controller(act, PolicyConfig(), read_every=0.0, error_backoff=(60.0, 600.0))
    for i in range(4):  # one scrape every 15 s
        controller.step(stats(0.9, speculation=False), T0 + 15 * i)
    assert [r.outcome for r in controller.decisions] == ["not_restorable"]  # tried once, then backing off
    controller.step(stats(0.9, speculation=False), T0 + 61)
    assert [r.outcome for r in controller.decisions] == ["not_restorable", "not_restorable"]


def test_both_toggle_counters_are_exported_at_zero_before_the_first_toggle(tmp_path: Path) -> None:
    # A series that appears only with the first toggle hides that toggle from increase() and changes().
    _, controller = setup(tmp_path)
    assert metrics(controller)["specdecode_toggles"] == [
        ({"action": "disable", "mode": "auto"}, 0.0),
        ({"action": "enable", "mode": "auto"}, 0.0),
    ]
