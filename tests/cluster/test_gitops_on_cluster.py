"""GitOps drift on the real server: re-applying the chart while the sidecar has speculation off (what `helm
upgrade`, Argo CD or Flux do on sync) brings the chart's args back and leaves the sidecar's record in place, as
docs/install.md ("GitOps and helm upgrade") says; the sidecar then sees speculation on and can act again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import annotations as ann
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.deploy.tooling import CHART

ROOT = Path(__file__).resolve().parents[2]


def cli(cluster: Cluster, namespace: str, kubeconfig: Path, *args: str) -> dict[str, Any]:
    target = ["--deployment", chart.fullname("llm"), "--namespace", namespace, "--kubeconfig", str(kubeconfig)]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", *args, *target, "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("sync", ["helm upgrade", "kubectl apply --server-side"])
def test_re_applying_the_chart_while_speculation_is_off_restores_the_args_and_keeps_the_record(
    cluster: Cluster, tmp_path: Path, sync: str
) -> None:
    namespace = chart.new_namespace(cluster, "gitops")
    chart.install(cluster, "llm", namespace)
    name = chart.fullname("llm")
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(token, tmp_path / "kubeconfig", namespace)
    original = chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace))
    assert cli(cluster, namespace, kubeconfig, "disable", "--reason", "low_acceptance")["outcome"] == "changed"
    chart.rollout(cluster, namespace, name)

    if sync == "helm upgrade":
        chart.helm(cluster, "upgrade", "llm", CHART, "--namespace", namespace, "--wait", "--timeout", "180s")
    else:  # what Argo CD (server-side apply) or Flux do with the rendered chart
        rendered = chart.helm(cluster, "template", "llm", CHART, "--namespace", namespace).stdout
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager", "gitops", "-n", namespace, "-f", "-",
            stdin=rendered,
        )  # fmt: skip
    chart.rollout(cluster, namespace, name)

    synced = cluster.get_json("deployment", name, "-n", namespace)
    assert chart.vllm_args(synced) == original  # speculation is back
    record = ann.from_annotations(synced["metadata"]["annotations"])
    assert record.state == "off" and record.removed is not None  # the record stayed
    status = cli(cluster, namespace, kubeconfig, "status")
    assert status["speculation"] == "on"  # the sidecar reads the args, not its record
    # It can act again: a disable removes the flags once more, an enable restores the chart's args.
    assert cli(cluster, namespace, kubeconfig, "disable")["outcome"] == "changed"
    chart.rollout(cluster, namespace, name)
    assert "--speculative-config" not in chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace))
    assert cli(cluster, namespace, kubeconfig, "enable")["outcome"] == "changed"
    chart.rollout(cluster, namespace, name)
    assert chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace)) == original
