"""Conflicts and races on the real API server: its resourceVersion and JSON Patch `test` ops, not the test
server's, decide who writes.

The real server takes no injected delays, so the tests step in on the client side instead: a wrapper around the
actuator's PATCH call lets another writer (or another sidecar) act after our read and before our write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from sidecar.adapters.kube.lease import LeaseElector
from sidecar.core import annotations as ann
from sidecar.core.actuator import ActResult, Outcome
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.policy import Action, Decision, PolicyState, Reason
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.kubeapi.manifests import LIST_ARGS, NAME, list_deployment

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1, timeout=(5.0, 10.0))


def deployment_in_namespace(cluster: Cluster, prefix: str) -> str:
    namespace = chart.new_namespace(cluster, prefix)
    deployment = list_deployment()
    deployment["metadata"]["namespace"] = namespace
    cluster.apply(deployment)
    chart.rollout(cluster, namespace, NAME)
    return namespace


def actuator(cluster: Cluster, namespace: str, identity: str = "pod-a", **kwargs: Any) -> KubeActuator:
    return KubeActuator(
        api_client(kubeconfig=str(cluster.kubeconfig)),
        namespace=namespace,
        deployment=NAME,
        container="vllm",
        identity=identity,
        retry=FAST,
        **kwargs,
    )


def before_first_patch(monkeypatch: pytest.MonkeyPatch, act: KubeActuator, step: Callable[[], object]) -> None:
    """Run ``step`` after the actuator has read the Deployment and planned its patch, just before it is sent."""
    original = act._patch
    calls = 0

    def patch(ops: list[dict[str, Any]]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            step()
        return original(ops)

    monkeypatch.setattr(act, "_patch", patch)


def vllm_args(cluster: Cluster, namespace: str) -> list[str]:
    return chart.vllm_args(cluster.get_json("deployment", NAME, "-n", namespace))


def toggle_events(cluster: Cluster, namespace: str) -> list[str]:
    events = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}")["items"]
    return [e["reason"] for e in events if e["reason"].startswith("Speculation")]


def auto_decision(action: Action, prior: ControlRecord) -> Decision:
    """What the policy hands over for an automatic toggle decided on ``prior``."""
    record = prior.toggled(0.0, str(action), By.SIDECAR, str(Reason.LOW_ACCEPTANCE), prior.removed)
    state = PolicyState(speculation=action is Action.ENABLE, rollout_complete=False, record=record)
    return Decision(action, Reason.LOW_ACCEPTANCE, state, True, "test", prior=prior)


def test_a_write_between_read_and_patch_fails_the_real_servers_test_op_and_an_automatic_decision_is_not_retried(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = deployment_in_namespace(cluster, "race-auto")
    act = actuator(cluster, namespace)
    before_first_patch(
        monkeypatch, act, lambda: cluster.kubectl("label", "deployment", NAME, "-n", namespace, "touched=yes")
    )
    result = act.disable(str(Reason.LOW_ACCEPTANCE), auto_decision(Action.DISABLE, ControlRecord()))
    assert result.outcome is Outcome.CONFLICT, result
    assert act.errors["invalid"] == 1  # the server's 422 for the failed test op, not a client-side check
    assert vllm_args(cluster, namespace) == LIST_ARGS
    assert toggle_events(cluster, namespace) == []


def test_a_manual_toggle_re_reads_after_the_real_servers_refusal_and_applies_on_the_fresh_object(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = deployment_in_namespace(cluster, "race-manual")
    act = actuator(cluster, namespace)
    before_first_patch(
        monkeypatch, act, lambda: cluster.kubectl("label", "deployment", NAME, "-n", namespace, "touched=yes")
    )
    result = act.disable("manual")
    assert result.outcome is Outcome.CHANGED, result
    assert act.errors["invalid"] == 1
    after = cluster.get_json("deployment", NAME, "-n", namespace)
    assert after["metadata"]["labels"]["touched"] == "yes"  # the other writer's change survives
    assert "--speculative-config" not in chart.vllm_args(after)
    assert len(ann.from_annotations(after["metadata"]["annotations"]).history) == 1
    assert toggle_events(cluster, namespace) == ["SpeculationDisabled"]


def race(actuators: list[KubeActuator]) -> list[ActResult]:
    barrier = threading.Barrier(len(actuators))
    results: list[ActResult] = []

    def run(act: KubeActuator) -> None:
        barrier.wait()
        results.append(act.disable(str(Reason.LOW_ACCEPTANCE)))

    threads = [threading.Thread(target=run, args=(a,)) for a in actuators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_sidecars_with_the_same_lease_produce_exactly_one_patch_on_the_real_server(cluster: Cluster) -> None:
    namespace = deployment_in_namespace(cluster, "race-lease")
    generation = cluster.get_json("deployment", NAME, "-n", namespace)["metadata"]["generation"]
    actuators = []
    for identity in ("pod-a", "pod-b"):
        api = api_client(kubeconfig=str(cluster.kubeconfig))
        elector = LeaseElector(api, namespace=namespace, name=f"{NAME}-spec-sidecar", identity=identity, retry=FAST)
        actuators.append(actuator(cluster, namespace, identity, elector=elector))
    results = race(actuators)
    assert sorted(r.outcome for r in results) == sorted([Outcome.CHANGED, Outcome.NOT_LEADER]), results
    after = cluster.get_json("deployment", NAME, "-n", namespace)
    # One patch: one generation step (args and record in the same write), one record, one Event.
    assert after["metadata"]["generation"] == generation + 1
    assert len(ann.from_annotations(after["metadata"]["annotations"]).history) == 1
    assert toggle_events(cluster, namespace) == ["SpeculationDisabled"]


def test_without_a_lease_the_real_servers_test_op_still_lets_only_one_racer_write(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = deployment_in_namespace(cluster, "race-nolease")
    generation = cluster.get_json("deployment", NAME, "-n", namespace)["metadata"]["generation"]
    actuators = [actuator(cluster, namespace, identity) for identity in ("pod-a", "pod-b")]
    both_read = threading.Barrier(2)
    for act in actuators:
        before_first_patch(monkeypatch, act, lambda: both_read.wait(30))  # both have read before either writes
    results = race(actuators)
    assert sorted(r.outcome for r in results) == sorted([Outcome.CHANGED, Outcome.UNCHANGED]), results
    assert sum(a.errors["invalid"] for a in actuators) == 1
    after = cluster.get_json("deployment", NAME, "-n", namespace)
    assert after["metadata"]["generation"] == generation + 1
    assert toggle_events(cluster, namespace) == ["SpeculationDisabled"]
