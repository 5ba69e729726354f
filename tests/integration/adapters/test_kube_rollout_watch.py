"""After a config write, the sidecar watches the rollout: pods not ready within --rollout-timeout mean the previous
config is put back byte for byte, a Warning Event, the revert metrics, and a latch until a human clears it.

Runs on the test API server and, unchanged, on the real cluster (tests/cluster/test_adapter_tests_on_cluster.py),
where ``no_room_for_new_pods`` cordons the kwok nodes so the new ReplicaSet's pods stay Pending.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.control.loop import ControlCollector, Controller
from sidecar.core import annotations as ann
from sidecar.core import rollout_watch
from sidecar.core.actuator import Outcome, Plan, TargetView
from sidecar.core.policy import Action, PolicyConfig, Reason
from tests.kubeapi.manifests import LIST_ARGS, NAME, NAMESPACE, SPEC_CONFIG, deployment, list_deployment
from tests.kubeapi.server import KubeAPI, kube_api
from tests.support.kube_actuators import actuator_on
from tests.support.stats_builders import stats

T0 = 1_800_000_000.0
TIMEOUT = 600.0
# Acts on the first low window, so that only the latch can hold it back.
ACTING = PolicyConfig(trip_windows=1, cooldown=0.0, spread_min=0, min_draft_tokens=100.0)


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def setup(server: KubeAPI) -> tuple[KubeActuator, Controller, Clock]:
    clock = Clock()
    act = actuator_on(server.url, clock=clock)
    return act, Controller(act, ACTING, read_every=0.0, rollout_timeout=TIMEOUT, clock=clock), clock


def vllm(obj: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    return found


def notes_of(server: KubeAPI) -> dict[str, str]:
    found: dict[str, str] = server.deployment(NAMESPACE, NAME)["metadata"].get("annotations") or {}
    return found


def metric(controller: Controller, name: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(ControlCollector(controller))
    return registry.get_sample_value(name)


def reasons(server: KubeAPI) -> list[tuple[str, str]]:
    return [(e["reason"], e["type"]) for e in server.events]


def test_a_disable_whose_pods_never_become_ready_is_put_back_byte_for_byte_with_a_warning_and_a_latch(
    server: KubeAPI,
) -> None:
    original = vllm(server.add_deployment(list_deployment()))
    _, controller, clock = setup(server)
    with server.no_room_for_new_pods():
        assert controller.step(stats(0.2), clock.now) is not None  # low acceptance: the sidecar disables
        assert "--speculative-config" not in vllm(server.deployment(NAMESPACE, NAME))["args"]
        assert rollout_watch.WATCH in notes_of(server)

        clock.now = T0 + TIMEOUT - 1  # not ready yet, but still within the bound: wait
        controller.step(stats(0.2), clock.now)
        assert "--speculative-config" not in vllm(server.deployment(NAMESPACE, NAME))["args"]

        clock.now = T0 + TIMEOUT  # the bound is over and the new pods are still not ready
        assert controller.step(stats(0.2), clock.now) is None
        restored = server.deployment(NAMESPACE, NAME)
    assert vllm(restored)["args"] == original["args"] == LIST_ARGS
    assert vllm(restored).get("command") == original.get("command")
    notes = restored["metadata"]["annotations"]
    assert notes[ann.LATCHED].startswith(rollout_watch.REVERT_LATCH)
    assert "within 600s; the previous config was restored" in notes[ann.LATCHED]
    assert rollout_watch.WATCH not in notes and ann.REMOVED_ARGS not in notes
    assert ("SpeculationRolloutReverted", "Warning") in reasons(server)
    assert metric(controller, "specdecode_rollout_reverts_total") == 1.0
    assert metric(controller, "specdecode_rollout_reverted") == 1.0

    # Latched: low acceptance no longer turns speculation off, until a human clears the latch.
    server.complete_rollout(NAMESPACE, NAME)
    patches = len(server.applied_patches())
    clock.now += 60
    decision = controller.step(stats(0.1), clock.now)
    assert decision is not None and decision.action is Action.NONE and decision.reason is Reason.LATCHED
    assert len(server.applied_patches()) == patches
    assert controller.decision_state() == "latched"

    server.edit(NAMESPACE, NAME, lambda obj: obj["metadata"]["annotations"].pop(ann.LATCHED))  # the runbook's step
    server.complete_rollout(NAMESPACE, NAME)
    clock.now += 60
    decision = controller.step(stats(0.1), clock.now)
    assert decision is not None and decision.action is Action.DISABLE
    assert "--speculative-config" not in vllm(server.deployment(NAMESPACE, NAME))["args"]
    assert metric(controller, "specdecode_rollout_reverted") == 0.0


def test_a_write_whose_rollout_finishes_drops_its_watch_and_is_never_reverted(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    act, controller, clock = setup(server)
    assert act.disable("by hand").outcome is Outcome.CHANGED
    assert rollout_watch.WATCH in notes_of(server)
    server.complete_rollout(NAMESPACE, NAME)

    # On the real server the deployment controller may still be writing the status (terminating replicas) or win
    # the race for the resourceVersion: the watch goes at one of the next few steps, and never by a revert (below).
    for step in range(5):
        clock.now = T0 + 10 * TIMEOUT + step
        controller.step(None, clock.now)
        after = server.deployment(NAMESPACE, NAME)
        if rollout_watch.WATCH not in after["metadata"]["annotations"]:
            break
        time.sleep(1.0)
    assert rollout_watch.WATCH not in after["metadata"]["annotations"]
    assert "--speculative-config" not in vllm(after)["args"]
    assert ann.LATCHED not in after["metadata"]["annotations"]
    assert "SpeculationRolloutReverted" not in [r for r, _ in reasons(server)]
    assert metric(controller, "specdecode_rollout_reverts_total") == 0.0


def test_an_enable_whose_pods_never_become_ready_puts_back_the_disabled_args_and_keeps_them_restorable(
    server: KubeAPI,
) -> None:
    server.add_deployment(list_deployment())
    act, controller, clock = setup(server)
    assert act.disable("by hand").outcome is Outcome.CHANGED
    server.complete_rollout(NAMESPACE, NAME)
    disabled = server.deployment(NAMESPACE, NAME)
    with server.no_room_for_new_pods():
        assert act.enable("by hand").outcome is Outcome.CHANGED
        clock.now = T0 + TIMEOUT + 1
        controller.step(None, clock.now)
        reverted = server.deployment(NAMESPACE, NAME)
    assert vllm(reverted)["args"] == vllm(disabled)["args"]
    notes = reverted["metadata"]["annotations"]
    assert notes[ann.REMOVED_ARGS] == disabled["metadata"]["annotations"][ann.REMOVED_ARGS]  # enable still possible
    assert notes[ann.STATE] == "off"
    assert "written by enable" in notes[ann.LATCHED]


def test_a_speculative_config_the_engines_version_rejects_is_refused_before_anything_is_written(
    server: KubeAPI,
) -> None:
    server.add_deployment(deployment(args=LIST_ARGS))
    server.edit(NAMESPACE, NAME, lambda obj: vllm(obj).update(image="vllm/vllm-openai:v0.34.0"))
    server.complete_rollout(NAMESPACE, NAME)
    act, _, _ = setup(server)
    config = dict(json.loads(SPEC_CONFIG), disable_padded_drafter_batch=True)  # a key 0.34 no longer knows

    def rewrite(view: TargetView) -> Plan:
        assert view.args is not None
        args = [json.dumps(config) if a == SPEC_CONFIG else a for a in view.args]
        return Plan(view.command, args, view.record, ("--speculative-config",))

    patches = len(server.applied_patches())
    result = act._write("reduce-k", "test", rewrite, automatic=False)  # any write goes this way
    assert result.outcome is Outcome.ENGINE_WOULD_REFUSE
    assert "disable_padded_drafter_batch" in result.detail and "vLLM 0.34.0" in result.detail
    assert len(server.applied_patches()) == patches
    assert vllm(server.deployment(NAMESPACE, NAME))["args"] == LIST_ARGS
    assert ("SpeculationConfigRefused", "Warning") in reasons(server)


def test_a_sidecar_started_after_the_write_reverts_it_from_the_annotation_alone_and_a_dry_run_one_does_not(
    server: KubeAPI,
) -> None:
    server.add_deployment(list_deployment())
    act, _, clock = setup(server)
    with server.no_room_for_new_pods():
        assert act.disable("by hand").outcome is Outcome.CHANGED
        clock.now = T0 + TIMEOUT
        dry = Controller(act, replace(ACTING, dry_run=True), read_every=0.0, rollout_timeout=TIMEOUT, clock=clock)
        dry.step(None, clock.now)
        assert rollout_watch.WATCH in notes_of(server)  # a dry run writes nothing, a revert included
        fresh = Controller(act, ACTING, read_every=0.0, rollout_timeout=TIMEOUT, clock=clock)  # nothing in memory
        fresh.step(None, clock.now)
        assert vllm(server.deployment(NAMESPACE, NAME))["args"] == LIST_ARGS
    assert rollout_watch.is_revert_latch(notes_of(server).get(ann.LATCHED))
