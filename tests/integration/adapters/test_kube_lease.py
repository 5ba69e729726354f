"""One actor per Deployment: a coordination.k8s.io/v1 Lease, with the real client against the test API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from sidecar.adapters.kube.lease import LeaseElector
from sidecar.core.actuator import ActResult, Outcome
from tests.kubeapi.manifests import NAME, NAMESPACE, list_deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api

T0 = 1_800_000_000.0
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, timeout=(1.0, 2.0))


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def elector(server: KubeAPI, identity: str, clock: Clock, **kwargs: Any) -> LeaseElector:
    return LeaseElector(
        api_client(host=server.url),
        namespace=NAMESPACE,
        name=f"{NAME}-spec-sidecar",
        identity=identity,
        duration=15,
        clock=clock,
        retry=FAST,
        **kwargs,
    )


def test_the_first_sidecar_creates_the_lease_and_a_second_one_is_not_leader(server: KubeAPI) -> None:
    clock = Clock(T0)
    a, b = elector(server, "pod-a", clock), elector(server, "pod-b", clock)
    assert a.acquire_or_renew()
    assert not b.acquire_or_renew()
    assert b.holder == "pod-a"
    lease = server.leases[(NAMESPACE, f"{NAME}-spec-sidecar")]
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 15


def test_the_holder_renews_and_keeps_the_lease(server: KubeAPI) -> None:
    clock = Clock(T0)
    a, b = elector(server, "pod-a", clock), elector(server, "pod-b", clock)
    a.acquire_or_renew()
    for _ in range(3):
        clock.now += 10
        assert a.acquire_or_renew()
        assert not b.acquire_or_renew()


def test_an_expired_lease_is_taken_over_and_counts_a_transition(server: KubeAPI) -> None:
    clock = Clock(T0)
    a, b = elector(server, "pod-a", clock), elector(server, "pod-b", clock)
    a.acquire_or_renew()
    clock.now += 16  # pod-a stopped renewing
    assert b.acquire_or_renew()
    assert not a.acquire_or_renew()
    spec = server.leases[(NAMESPACE, f"{NAME}-spec-sidecar")]["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)


def test_racers_for_an_absent_lease_produce_exactly_one_leader(server: KubeAPI) -> None:
    clock = Clock(T0)
    electors = [elector(server, f"pod-{i}", clock) for i in range(4)]
    barrier = threading.Barrier(len(electors))
    results: dict[str, bool] = {}

    def race(e: LeaseElector) -> None:
        barrier.wait()
        results[e.identity] = e.acquire_or_renew()

    threads = [threading.Thread(target=race, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(results.values()) == 1


def test_two_racing_sidecars_produce_exactly_one_patch(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    clock = Clock(T0)
    actuators = [
        KubeActuator(
            api_client(host=server.url),
            namespace=NAMESPACE,
            deployment=NAME,
            container="vllm",
            identity=f"pod-{i}",
            elector=elector(server, f"pod-{i}", clock),
            retry=FAST,
            clock=clock,
        )
        for i in range(2)
    ]
    barrier = threading.Barrier(2)
    results: list[ActResult] = []

    def race(act: KubeActuator) -> None:
        barrier.wait()
        results.append(act.disable("low_acceptance"))

    threads = [threading.Thread(target=race, args=(a,)) for a in actuators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.outcome for r in results) == sorted([Outcome.CHANGED, Outcome.NOT_LEADER])
    assert len(server.applied_patches()) == 1
    assert len(server.events) == 1
    assert "--speculative-config" not in vllm_container(server.deployment(NAMESPACE, NAME))["args"]


def test_a_lease_server_error_means_not_leader_and_no_patch(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("GET", "/leases/", 500, times=5)
    act = KubeActuator(
        api_client(host=server.url),
        namespace=NAMESPACE,
        deployment=NAME,
        container="vllm",
        elector=elector(server, "pod-a", Clock(T0)),
        retry=FAST,
    )
    assert act.disable("x").outcome is Outcome.NOT_LEADER
    assert server.applied_patches() == []


def test_without_a_lease_the_guarded_patch_still_lets_only_one_racer_write(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("PATCH", "/deployments/", delay=0.2, times=2)  # both read before either writes
    actuators = [
        KubeActuator(api_client(host=server.url), namespace=NAMESPACE, deployment=NAME, container="vllm", retry=FAST)
        for _ in range(2)
    ]
    barrier = threading.Barrier(2)
    results: list[ActResult] = []

    def race(act: KubeActuator) -> None:
        barrier.wait()
        results.append(act.disable("low_acceptance"))

    threads = [threading.Thread(target=race, args=(a,)) for a in actuators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.outcome for r in results) == sorted([Outcome.CHANGED, Outcome.UNCHANGED])
    assert len(server.applied_patches()) == 1
    assert [r.status for r in server.requests if r.method == "PATCH"].count(422) == 1


def test_a_released_lease_is_taken_at_once_by_the_next_sidecar(server: KubeAPI) -> None:
    clock = Clock(T0)
    a, b = elector(server, "pod-a", clock), elector(server, "pod-b", clock)
    assert a.acquire_or_renew()
    a.release()
    assert not a.is_leader
    assert b.acquire_or_renew()  # no need to wait for the 15 s expiry
    assert server.leases[(NAMESPACE, f"{NAME}-spec-sidecar")]["spec"]["holderIdentity"] == "pod-b"


def test_releasing_a_lease_someone_else_holds_changes_nothing(server: KubeAPI) -> None:
    clock = Clock(T0)
    a, b = elector(server, "pod-a", clock), elector(server, "pod-b", clock)
    a.acquire_or_renew()
    clock.now += 16
    b.acquire_or_renew()  # took over the expired lease; pod-a still believes it leads
    a.release()
    assert server.leases[(NAMESPACE, f"{NAME}-spec-sidecar")]["spec"]["holderIdentity"] == "pod-b"


def test_the_controller_keeps_the_lease_while_alive_and_hands_it_over_on_close(server: KubeAPI) -> None:
    from sidecar.control.loop import ControlCollector, Controller
    from sidecar.core.policy import PolicyConfig

    server.add_deployment(list_deployment())
    clock = Clock(T0)
    act = KubeActuator(
        api_client(host=server.url),
        namespace=NAMESPACE,
        deployment=NAME,
        container="vllm",
        identity="pod-a",
        elector=elector(server, "pod-a", clock),
        retry=FAST,
        clock=clock,
    )
    controller = Controller(act, PolicyConfig(), act.elector, clock=clock)
    rival = elector(server, "pod-b", clock)
    for _ in range(6):  # a minute of scrapes, 10 s apart: longer than the 15 s lease
        controller.step(None, clock.now)
        assert not rival.acquire_or_renew()
        clock.now += 10
    leader = next(f for f in ControlCollector(controller).collect() if f.name == "specdecode_leader")
    assert [s.value for s in leader.samples] == [1.0]
    controller.close()
    assert rival.acquire_or_renew()
