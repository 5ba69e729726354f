"""The sidecar's annotation-only writes on the real server, where they bump the Deployment's generation.

The real API server bumps a Deployment's generation when only its annotations change (the test server does
not; docs/testing.md). So right after the sidecar records a passed trial (or a latch, or a human sets a pin),
`observedGeneration < generation` until the deployment controller has seen the write, though no pod rolls. The
sidecar knows the generations its own annotation-only writes made, and its rollout check does not count them as
a rollout: the state it reports stays "on" and the next window is judged, however late the deployment
controller is. Shown here with the controller running, and with it stopped (SIGSTOP to its PID) so that the
gap lasts: any other change (someone else's annotation) still reads as a rollout until the controller has
seen it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core.actuator import Outcome
from sidecar.core.policy import Action, Reason
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.kubeapi.manifests import NAME
from tests.support.kube_records import T0, TRIAL_CONFIG, trial_deployment
from tests.support.stats_builders import stats

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1, timeout=(5.0, 10.0))


def test_after_recording_a_passed_trial_the_loop_reads_rollout_only_until_the_controller_has_observed_the_write(
    cluster: Cluster,
) -> None:
    namespace = chart.new_namespace(cluster, "annotations")
    deployment = trial_deployment()
    deployment["metadata"]["namespace"] = namespace
    cluster.apply(deployment)
    chart.rollout(cluster, namespace, NAME)

    def stored() -> dict[str, Any]:
        found: dict[str, Any] = cluster.get_json("deployment", NAME, "-n", namespace)
        return found

    before = stored()
    act = KubeActuator(
        api_client(kubeconfig=str(cluster.kubeconfig)), namespace=namespace, deployment=NAME, container="vllm",
        retry=FAST, clock=lambda: T0,
    )  # fmt: skip
    controller = Controller(act, TRIAL_CONFIG)  # the default read period (15 s), driven by the windows' times
    steps = [controller.step(stats(0.6), T0 + 100 + 60 * i) for i in range(3)]
    assert [(d.action, d.reason) for d in steps if d is not None] == [
        (Action.NONE, Reason.TRIAL_RUNNING),
        (Action.NONE, Reason.TRIAL_RUNNING),
        (Action.RECORD, Reason.TRIAL_PASSED),
    ]
    assert [r.outcome for r in controller.decisions] == [str(Outcome.CHANGED)]

    # The write bumped the generation, though the pod template is the same. The actuator reads the Deployment
    # back after its write; had the deployment controller not observed the write by then, the loop would report
    # "rollout" until its next read. Here it had (it takes milliseconds), or it has a moment later:
    after = stored()
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["spec"] == before["spec"]
    assert after["metadata"]["annotations"][ann.REASON] == "trial_passed"
    assert controller.view is not None and controller.view.rollout_complete
    assert controller.decision_state() == "on"

    # The deployment controller observes it at once: no new ReplicaSet, no pod rolls.
    began = time.monotonic()
    while stored()["status"].get("observedGeneration") != after["metadata"]["generation"]:
        assert time.monotonic() - began < 10, stored()["status"]
        time.sleep(0.1)
    assert len(cluster.get_json("rs", "-n", namespace)["items"]) == 1

    # The next window reads afresh (a write always forces a read) and is judged: 0.3 counts as a failing one.
    fourth = controller.step(stats(0.3), T0 + 280)
    assert fourth is not None and (fourth.action, fourth.reason) == (Action.NONE, Reason.TRIPPING), fourth
    assert controller.view is not None and controller.view.rollout_complete
    assert controller.decision_state() == "tripping"


@contextlib.contextmanager
def deployment_controller_stopped(cluster: Cluster) -> Iterator[None]:
    """The kube-controller-manager this session started, stopped (SIGSTOP) and then continued: no generation is
    observed meanwhile. It runs without leader election, so a pause costs it no lease."""
    (kcm,) = [c for c in cluster.components if c.name == "kube-controller-manager"]
    kcm.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        kcm.process.send_signal(signal.SIGCONT)


def test_while_the_deployment_controller_lags_the_sidecars_own_record_write_is_no_rollout_but_anyone_elses_is(
    cluster: Cluster,
) -> None:
    namespace = chart.new_namespace(cluster, "annotations")
    deployment = trial_deployment()
    deployment["metadata"]["namespace"] = namespace
    cluster.apply(deployment)
    chart.rollout(cluster, namespace, NAME)

    def stored() -> dict[str, Any]:
        found: dict[str, Any] = cluster.get_json("deployment", NAME, "-n", namespace)
        return found

    def actuator() -> KubeActuator:
        api = api_client(kubeconfig=str(cluster.kubeconfig))
        return KubeActuator(api, namespace=namespace, deployment=NAME, container="vllm", retry=FAST, clock=lambda: T0)

    act = actuator()
    controller = Controller(act, TRIAL_CONFIG)
    generation = stored()["metadata"]["generation"]
    with deployment_controller_stopped(cluster):
        steps = [controller.step(stats(0.6), T0 + 100 + 60 * i) for i in range(3)]
        assert steps[-1] is not None and (steps[-1].action, steps[-1].reason) == (Action.RECORD, Reason.TRIAL_PASSED)
        assert [r.outcome for r in controller.decisions] == [str(Outcome.CHANGED)]
        after = stored()
        # The gap, held open: the write made a generation the deployment controller has not seen.
        assert after["metadata"]["generation"] == generation + 1
        assert after["status"]["observedGeneration"] == generation
        # The sidecar that wrote it knows it changed annotations only: no rollout, on every read.
        assert controller.view is not None and controller.view.rollout_complete
        assert controller.decision_state() == "on"
        assert act.read().rollout_complete
        fourth = controller.step(stats(0.3), T0 + 280)  # judged at once, not held as "rollout_in_progress"
        assert fourth is not None and (fourth.action, fourth.reason) == (Action.NONE, Reason.TRIPPING), fourth
        # Another reader (a `spec-sidecar status`, a new sidecar) cannot tell and says not rolled out yet.
        assert not actuator().read().rollout_complete
        # Someone else's write, annotations only though it is, may not be told from a template change.
        cluster.kubectl("annotate", "deployment", NAME, "-n", namespace, "example.com/owner=team-a")
        assert stored()["metadata"]["generation"] == generation + 2
        assert not act.read().rollout_complete
    began = time.monotonic()
    while stored()["status"].get("observedGeneration") != generation + 2:
        assert time.monotonic() - began < 30, stored()["status"]
        time.sleep(0.2)
    assert act.read().rollout_complete and actuator().read().rollout_complete
    assert len(cluster.get_json("rs", "-n", namespace)["items"]) == 1  # no pod rolled for any of it
