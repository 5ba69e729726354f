"""The sidecar's annotation-only writes on the real server, where they bump the Deployment's generation.

The real API server bumps a Deployment's generation when only its annotations change (the test server does
not; docs/testing.md). So right after the sidecar records a passed trial (or a latch, or a human sets a pin),
`observedGeneration < generation` and the rollout reads as unfinished, though no pod rolls. This shows what the
decision loop makes of it: the state it reports says "rollout" only until its next read after the deployment
controller has observed the write (well under a second here), and the next window is judged as usual.
"""

from __future__ import annotations

import time
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
    assert controller.decision_state() in ("rollout", "on"), controller.decision_state()

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
