"""The Helm chart against a real API server: it installs (the server's own validation, CRDs included), the vLLM
Deployment rolls out to Ready pods on the kwok nodes, an upgrade rolls out the new values, and an uninstall
leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import chart
from tests.cluster.cluster import NODE_NAMES, Cluster
from tests.deploy.tooling import CHART

KUBE_GO_MOD = Path(__file__).parent / "tools" / "kube" / "go.mod"

MONITORING = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    # The chart's NetworkPolicy keeps vLLM's own port closed unless Prometheus is listed (the chart requires it
    # with a ServiceMonitor): here, a Prometheus in the "monitoring" namespace.
    "networkPolicy": {
        "vllmFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    },
}


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Iterator[list[str]]:
    names = chart.install_crds(cluster)
    yield names


def test_the_server_accepts_every_object_of_the_chart_with_monitoring_under_strict_field_validation(
    cluster: Cluster, crds: list[str], tmp_path: Path
) -> None:
    assert "servicemonitors.monitoring.coreos.com" in crds and "prometheusrules.monitoring.coreos.com" in crds
    namespace = chart.new_namespace(cluster, "validate")
    values = chart.values_file(tmp_path / "values.yaml", MONITORING)
    rendered = chart.helm(cluster, "template", "llm", CHART, "--namespace", namespace, "-f", values).stdout
    # --validate=strict: an unknown or duplicated field is an error, not a warning the server drops silently.
    done = cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-", "-o", "name", stdin=rendered
    )
    created = set(done.stdout.split())
    for kind in ("deployment.apps", "servicemonitor.monitoring.coreos.com", "prometheusrule.monitoring.coreos.com"):
        assert f"{kind}/llm-spec-sidecar" in created, done.stdout
    assert {
        "role.rbac.authorization.k8s.io/llm-spec-sidecar",
        "serviceaccount/llm-spec-sidecar",
        "networkpolicy.networking.k8s.io/llm-spec-sidecar",
    } <= created, done.stdout


def test_helm_install_with_monitoring_rolls_the_vllm_deployment_out_to_ready_pods_on_the_kwok_nodes(
    cluster: Cluster, crds: list[str], tmp_path: Path
) -> None:
    del crds
    namespace = chart.new_namespace(cluster, "install")
    chart.install(cluster, "llm", namespace, "-f", chart.values_file(tmp_path / "values.yaml", MONITORING))
    name = chart.fullname("llm")

    deployment = cluster.get_json("deployment", name, "-n", namespace)
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 1
    pods = chart.pods(cluster, namespace, "llm")
    assert pods and all(chart.ready_on_fake_nodes(p) for p in pods), chart.dumps([p["status"] for p in pods])
    assert "--speculative-config" in chart.vllm_args(pods[0])
    # Every object helm says it made is there, in the kind the server knows.
    for obj in chart.manifest(cluster, "llm", namespace):
        kind = obj["kind"].lower()
        assert cluster.kubectl("get", kind, obj["metadata"]["name"], "-n", namespace, check=False).returncode == 0
    assert cluster.get_json("servicemonitor", name, "-n", namespace)["spec"]["endpoints"]
    assert cluster.get_json("prometheusrule", name, "-n", namespace)["spec"]["groups"]


def test_helm_upgrade_rolls_out_the_changed_values_and_uninstall_leaves_nothing_behind(
    cluster: Cluster, crds: list[str], tmp_path: Path
) -> None:
    del crds
    namespace = chart.new_namespace(cluster, "upgrade")
    chart.install(cluster, "llm", namespace, "-f", chart.values_file(tmp_path / "v1.yaml", MONITORING))
    name = chart.fullname("llm")
    before = cluster.get_json("deployment", name, "-n", namespace)

    changed = {
        **MONITORING,
        "prometheusRule": {"enabled": False},  # dropped from the release: helm must delete it
        "replicaCount": 2,
        "vllm": {"speculativeConfig": "", "extraArgs": ["--max-model-len", "4096"]},
    }
    chart.helm(
        cluster, "upgrade", "llm", CHART, "--namespace", namespace, "--wait", "--timeout", "180s",
        "-f", chart.values_file(tmp_path / "v2.yaml", changed),
    )  # fmt: skip
    chart.rollout(cluster, namespace, name)
    after = cluster.get_json("deployment", name, "-n", namespace)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["status"]["readyReplicas"] == after["status"]["updatedReplicas"] == 2
    pods = [p for p in chart.pods(cluster, namespace, "llm") if "deletionTimestamp" not in p["metadata"]]
    assert len(pods) == 2 and all(chart.ready_on_fake_nodes(p) for p in pods)
    for pod in pods:
        args = chart.vllm_args(pod)
        assert "--speculative-config" not in args and args[args.index("--max-model-len") + 1] == "4096"
    # The old ReplicaSet is scaled to zero: the pods above are the new template's.
    replicasets = cluster.get_json("replicasets", "-n", namespace, "-l", "app.kubernetes.io/instance=llm")["items"]
    assert sorted(rs["status"].get("replicas", 0) for rs in replicasets) == [0, 2]
    assert cluster.kubectl("get", "prometheusrule", name, "-n", namespace, check=False).returncode != 0

    chart.helm(cluster, "uninstall", "llm", "--namespace", namespace, "--wait", "--timeout", "120s")
    # The garbage collector removes the ReplicaSets, kwok the pods: wait for both, then nothing may be left.
    cluster.kubectl(
        "wait", "--for=delete", "pods,replicasets", "-l", "app.kubernetes.io/instance=llm", "-n", namespace,
        "--timeout", "60s",
    )  # fmt: skip
    assert chart.leftovers(cluster, namespace) == []
    assert chart.cluster_scoped_with_label(cluster, "llm") == []


def test_the_fake_nodes_offer_the_gpu_the_chart_requests(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    assert set(NODE_NAMES) <= set(nodes)
    for name in NODE_NAMES:
        assert int(nodes[name]["status"]["allocatable"]["nvidia.com/gpu"]) >= 1


def test_the_server_and_kubectl_report_the_kubernetes_version_the_go_module_pins(cluster: Cluster) -> None:
    # The build stamps it (ldflags); unstamped binaries say v0.0.0-master and helm would see a bogus version.
    pinned = next(
        line.split()[2] for line in KUBE_GO_MOD.read_text().splitlines() if line.startswith("require k8s.io/kubernetes")
    )
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"] == pinned
