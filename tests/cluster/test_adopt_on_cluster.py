"""Adopting a vLLM someone else deploys, on the real API server: every recipe's injected output is accepted under
strict field validation, and the chart's existing-Deployment mode plus `kubectl get | spec-sidecar inject |
kubectl apply` gives a pod whose sidecar may turn speculation off on that Deployment (and on nothing else)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.deploy.tooling import CHART

ROOT = Path(__file__).resolve().parents[2]
ADOPT = ROOT / "docs" / "adopt"
ENTRY_POINT = Path(sys.executable).with_name("spec-sidecar")


def inject(text: str, *args: str) -> str:
    done = subprocess.run(
        [str(ENTRY_POINT), "inject", *args], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def ensure_namespace(cluster: Cluster, name: str) -> None:
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)


@pytest.mark.parametrize(
    ("recipe", "args"),
    [
        ("production-stack.yaml", ("--with-rbac", "--with-service")),
        ("llm-d.yaml", ("--with-rbac",)),
        ("gitops/vllm.yaml", ("--namespace", "adopt-gitops", "--with-rbac", "--with-service")),
    ],
)
def test_the_api_server_accepts_every_injected_recipe_under_strict_field_validation(
    cluster: Cluster, recipe: str, args: tuple[str, ...]
) -> None:
    # The KServe recipe is not here: its kinds are KServe's CRDs, which this cluster does not have (tests/deploy
    # checks its containers as a Pod's).
    out = inject((ADOPT / recipe).read_text(), *args)
    docs = [d for d in yaml.safe_load_all(out) if d]
    for namespace in {d["metadata"].get("namespace", "adopt-gitops") for d in docs}:
        ensure_namespace(cluster, namespace)
    namespace_flag = ["-n", "adopt-gitops"] if recipe.startswith("gitops/") else []
    done = cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", *namespace_flag, "-f", "-", "-o", "name", stdin=out
    )
    assert len(done.stdout.split()) == len(docs), done.stdout + done.stderr
    assert "deployment.apps/" in done.stdout


def control(kubeconfig: Path, namespace: str, *args: str) -> dict[str, Any]:
    target = [
        "--deployment",
        "qwen",
        "--namespace",
        namespace,
        "--container",
        "engine",
        "--kubeconfig",
        str(kubeconfig),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", *args, *target, "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_chart_beside_an_existing_deployment_then_inject_gives_a_sidecar_that_can_turn_speculation_off(
    cluster: Cluster, tmp_path: Path
) -> None:
    namespace = chart.new_namespace(cluster, "adopt")
    cluster.kubectl("apply", "-n", namespace, "-f", str(ADOPT / "gitops" / "vllm.yaml"))
    chart.rollout(cluster, namespace, "qwen")
    values = {
        "vllm": {"enabled": False},
        "target": {"deployment": "qwen", "podLabels": {"app.kubernetes.io/name": "qwen"}},
    }
    chart.helm(
        cluster,
        "install",
        "adopt",
        CHART,
        "--namespace",
        namespace,
        "-f",
        chart.values_file(tmp_path / "v.yaml", values),
    )
    account = "adopt-spec-sidecar"

    # What NOTES tells the user to run.
    current = cluster.kubectl("get", "deployment", "qwen", "-n", namespace, "-o", "yaml").stdout
    injected = inject(current, "--service-account", account)
    cluster.kubectl("apply", "-f", "-", stdin=injected)
    chart.rollout(cluster, namespace, "qwen")
    deployment = cluster.get_json("deployment", "qwen", "-n", namespace)
    listed = cluster.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=qwen")["items"]
    pods = [p for p in listed if chart.ready_on_fake_nodes(p)]
    assert pods and all([c["name"] for c in p["spec"]["containers"]] == ["engine", "spec-sidecar"] for p in pods)
    assert all(p["spec"]["serviceAccountName"] == account for p in pods)
    # The release's Service selects the injected pods and its ports resolve to theirs (what the endpoint-slice
    # controller does; this cluster runs without it, so the resolution is done here).
    service = cluster.get_json("service", "adopt-spec-sidecar", "-n", namespace)
    assert service["spec"]["selector"].items() <= pods[0]["metadata"]["labels"].items()
    declared = {p.get("name", ""): p["containerPort"] for c in pods[0]["spec"]["containers"] for p in c["ports"]}
    declared |= {str(port): port for port in declared.values()}
    ports = {p["name"]: declared[str(p["targetPort"])] for p in service["spec"]["ports"]}
    assert ports == {"http": 8081, "metrics": 8082, "vllm": 8000}

    # Injecting again into what the server now holds changes nothing the pods run: the same spec, no new
    # ReplicaSet. (The generation still moves: kubectl apply rewrites its last-applied annotation, and a
    # Deployment's generation counts annotation changes too.)
    again = inject(
        cluster.kubectl("get", "deployment", "qwen", "-n", namespace, "-o", "yaml").stdout, "--service-account", account
    )
    cluster.kubectl("apply", "-f", "-", stdin=again)
    assert cluster.get_json("deployment", "qwen", "-n", namespace)["spec"] == deployment["spec"]
    replicasets = cluster.get_json("replicasets", "-n", namespace, "-l", "app.kubernetes.io/name=qwen")["items"]
    assert len(replicasets) == 2  # the original template's and the injected one's

    # The sidecar's own credentials (the release's ServiceAccount) may turn speculation off on this Deployment.
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(token, tmp_path / "kubeconfig", namespace)
    assert control(kubeconfig, namespace, "disable", "--reason", "low_acceptance")["outcome"] == "changed"
    chart.rollout(cluster, namespace, "qwen")
    args = next(
        c
        for c in cluster.get_json("deployment", "qwen", "-n", namespace)["spec"]["template"]["spec"]["containers"]
        if c["name"] == "engine"
    )["args"]
    assert not any(a.startswith(("--speculative-config", "--per-request-spec-decode-metrics")) for a in args)
    # ... and on nothing else: another Deployment in the same namespace is forbidden to it.
    who = f"system:serviceaccount:{namespace}:{account}"
    denied = cluster.kubectl("auth", "can-i", "patch", "deployment/other", "-n", namespace, "--as", who, check=False)
    assert denied.stdout.strip() == "no"


def test_the_server_accepts_the_existing_deployment_mode_with_monitoring_under_strict_field_validation(
    cluster: Cluster, tmp_path: Path
) -> None:
    chart.install_crds(cluster)  # the Prometheus Operator's, for the ServiceMonitor and PrometheusRule
    namespace = chart.new_namespace(cluster, "adopt-monitoring")
    values = {
        "vllm": {"enabled": False},
        "target": {"deployment": "qwen", "podLabels": {"app.kubernetes.io/name": "qwen"}, "networkPolicy": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "networkPolicy": {"vllmFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]},
    }
    file = chart.values_file(tmp_path / "values.yaml", values)
    rendered = chart.helm(cluster, "template", "adopt", CHART, "--namespace", namespace, "-f", file).stdout
    done = cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-", "-o", "name", stdin=rendered
    )
    assert sorted(line.split("/")[0] for line in done.stdout.split()) == [
        "configmap", "networkpolicy.networking.k8s.io", "prometheusrule.monitoring.coreos.com",
        "role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io", "service", "serviceaccount",
        "servicemonitor.monitoring.coreos.com",
    ]  # fmt: skip
