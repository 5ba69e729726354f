"""An older sidecar's removal record with an API key in it, on the real server: the next sidecar rewrites it
without the key, and where Kubernetes itself copied it (the ReplicaSets' annotations) is shown as it is.

The deployment controller copies a Deployment's annotations onto the ReplicaSet of the current pod template at
every sync, and never removes them from the others. So the record an older sidecar wrote with its disable is
also on the ReplicaSet that disable created: while that template is current, the rewrite reaches the copy; once
an `enable` made another ReplicaSet current, the older one keeps what it holds until it is deleted or the
runbook's `kubectl annotate` removes it (docs/runbook.md, "Credentials in an older sidecar's record").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core import specargs
from sidecar.core.policy import PolicyConfig
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.integration.adapters.test_records_hold_no_secrets import ARGS, KEY, T0, older_sidecars_record
from tests.kubeapi.manifests import NAME, deployment, vllm_container
from tests.support.sidecar_process import wait_until

ROOT = Path(__file__).parents[2]
FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1, timeout=(5.0, 10.0))


def _replicasets(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("replicasets", "-n", namespace)["items"]
    return items


def _holding(cluster: Cluster, namespace: str, secret: str) -> list[str]:
    return [rs["metadata"]["name"] for rs in _replicasets(cluster, namespace) if secret in json.dumps(rs["metadata"])]


def test_the_current_replicasets_copy_of_an_older_sidecars_record_loses_the_key_with_the_rewrite(
    cluster: Cluster,
) -> None:
    namespace = chart.new_namespace(cluster, "redaction")
    after, notes = older_sidecars_record()
    manifest = deployment(args=after, annotations=notes)
    manifest["metadata"]["namespace"] = namespace
    cluster.apply(manifest)
    chart.rollout(cluster, namespace, NAME)

    def copies_with_the_key() -> list[str]:
        return _holding(cluster, namespace, KEY)

    assert len(copies_with_the_key()) == 1  # Kubernetes copied the older sidecar's record onto the ReplicaSet

    act = KubeActuator(
        api_client(kubeconfig=str(cluster.kubeconfig)), namespace=namespace, deployment=NAME, container="vllm",
        retry=FAST, clock=lambda: T0,
    )  # fmt: skip
    Controller(act, PolicyConfig(), read_every=0).step(None, T0)
    stored = cluster.get_json("deployment", NAME, "-n", namespace)
    assert json.loads(stored["metadata"]["annotations"][ann.REMOVED_ARGS]) == specargs.remove(None, ARGS).record
    wait_until(
        lambda: not copies_with_the_key(), 30, lambda: _replicasets(cluster, namespace)
    )  # the controller syncs the current copy

    on = subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", "enable", "--deployment", NAME, "--namespace",
         namespace, "--container", "vllm", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert on.returncode == 0 and on.stdout.startswith("changed"), on.stdout + on.stderr
    assert vllm_container(cluster.get_json("deployment", NAME, "-n", namespace))["args"] == ARGS
    chart.rollout(cluster, namespace, NAME)
    assert not copies_with_the_key()


def test_an_older_replicaset_keeps_its_copy_after_an_older_sidecars_enable_until_the_runbook_removes_it(
    cluster: Cluster,
) -> None:
    namespace = chart.new_namespace(cluster, "redaction")
    after, notes = older_sidecars_record()
    manifest = deployment(args=ARGS)
    manifest["metadata"]["namespace"] = namespace
    cluster.apply(manifest)
    chart.rollout(cluster, namespace, NAME)

    def written(args: list[str], annotations: dict[str, str | None]) -> None:
        """What an older sidecar's toggle writes: args and its annotations (None: removed) at once."""

        def change(obj: dict[str, Any]) -> None:
            vllm_container(obj)["args"] = args
            kept = {**obj["metadata"].get("annotations", {}), **annotations}
            obj["metadata"]["annotations"] = {k: v for k, v in kept.items() if v is not None}

        cluster.edit("deployment", NAME, namespace, change)
        chart.rollout(cluster, namespace, NAME)

    written(after, dict(notes))  # its disable, with the key in the record
    written(ARGS, dict.fromkeys(notes))  # its enable: the record goes, from the Deployment only
    assert ann.REMOVED_ARGS not in cluster.get_json("deployment", NAME, "-n", namespace)["metadata"]["annotations"]
    held = _holding(cluster, namespace, ann.REMOVED_ARGS)
    assert len(held) == 1 and held == _holding(cluster, namespace, KEY)

    # A sidecar of today finds no record on the Deployment, so nothing to rewrite; the runbook's command:
    cluster.kubectl("annotate", "replicaset", held[0], "-n", namespace, f"{ann.REMOVED_ARGS}-")
    assert not _holding(cluster, namespace, KEY)
