"""The chart beside a Deployment someone else owns (vllm.enabled=false, target.*): only the sidecar's objects,
checked by the real helm and kubernetes-validate --strict, and consistent with what `spec-sidecar inject` adds to
that Deployment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.tooling import CHART, ROOT, by_kind, documents, helm, one, render, run, tools

ENTRY_POINT = Path(sys.executable).with_name("spec-sidecar")
TARGET = ("--set", "vllm.enabled=false", "--set", "target.deployment=qwen")
PODS = ("--set-json", 'target.podLabels={"app.kubernetes.io/name":"qwen"}')
MONITORING = (
    "--set",
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    "--set-json",
    'networkPolicy.vllmFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]',
)
COMBINATIONS = {
    "rbac-only": TARGET,
    "with-service": (*TARGET, *PODS),
    "monitoring": (*TARGET, *PODS, *MONITORING),
    "network-policy": (*TARGET, *PODS, *MONITORING, "--set", "target.networkPolicy=true"),
    "measure-only": (*TARGET, *PODS, "--set", "sidecar.actuator.enabled=false"),
}
OPERATOR_KINDS = ("ServiceMonitor", "PrometheusRule")


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_helm_lint_strict_and_strict_validation_pass_beside_an_existing_deployment(name: str, tmp_path: Path) -> None:
    args = COMBINATIONS[name]
    linted = helm("lint", "--strict", CHART, *args, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    builtin = [d for d in documents(render(*args)) if d["kind"] not in OPERATOR_KINDS]
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    for version in ("1.25.0", "1.37.0"):
        result = run([tools()["kubernetes-validate"], "--strict", "-k", version, path], check=False)
        assert result.returncode == 0, f"{name} on {version}:\n{result.stdout}{result.stderr}"


def test_the_chart_makes_no_deployment_and_its_role_names_only_the_target_and_its_lease() -> None:
    docs = documents(render(*COMBINATIONS["monitoring"], release="adopt", namespace="ml"))
    assert by_kind(docs, "Deployment") == []
    assert sorted({d["kind"] for d in docs}) == [
        "ConfigMap", "PrometheusRule", "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceMonitor",
    ]  # fmt: skip
    named = {(r["resources"][0], tuple(r.get("resourceNames", ()))) for r in one(docs, "Role")["rules"]}
    assert ("deployments", ("qwen",)) in named and ("leases", ("qwen-spec-sidecar",)) in named


def test_the_service_selects_the_targets_pods_and_sends_its_vllm_port_to_target_vllm_port() -> None:
    docs = documents(render(*COMBINATIONS["with-service"], "--set", "target.vllmPort=8200"))
    service = one(docs, "Service")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "qwen"}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "tap",
        "metrics": "metrics",
        "vllm": 8200,
    }


def test_no_pod_labels_means_no_service_and_a_network_policy_only_when_asked() -> None:
    assert {d["kind"] for d in documents(render(*TARGET))} == {"ServiceAccount", "Role", "RoleBinding"}
    # networkPolicy.enabled is true by default, but on pods the release does not own it needs target.networkPolicy.
    assert by_kind(documents(render(*COMBINATIONS["monitoring"])), "NetworkPolicy") == []
    policy = one(documents(render(*COMBINATIONS["network-policy"])), "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "qwen"}}
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["tap", "metrics", 8000]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "vllm.enabled=false"), "set target.deployment"),
        (("--set", "vllm.enabled=false", "--set", "sidecar.actuator.enabled=false"), "set target.deployment"),
        ((*TARGET, "--set", "serviceMonitor.enabled=true"), "needs target.podLabels"),
        ((*TARGET, "--set", "target.deploymnet=x"), "deploymnet"),
    ],
)
def test_the_chart_refuses_an_existing_deployment_mode_that_cannot_work(args: tuple[str, ...], message: str) -> None:
    result = helm("template", "demo", CHART, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def _notes(tmp_path: Path, *args: str) -> str:
    # helm template skips NOTES.txt: render it through tpl from a copy of the chart (as test_helm_chart does).
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, symlinks=False)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-under-test.txt") . | indent 2 }}\n'
    )
    out = helm("template", "adopt", chart, "-n", "ml", "--show-only", "templates/zz-notes.yaml", *args).stdout
    return str(yaml.safe_load(out.split("\n", 2)[2])["notes"])


def test_notes_give_the_inject_pipeline_that_matches_the_releases_service_account(tmp_path: Path) -> None:
    notes = _notes(tmp_path, *COMBINATIONS["monitoring"])
    assert "Installed beside the Deployment ml/qwen" in notes
    assert "kubectl -n ml get deployment qwen -o yaml" in notes
    command = " ".join(notes.split("spec-sidecar inject", 1)[1].split("|", 1)[0].replace("\\", " ").split())
    assert command == "--service-account adopt-spec-sidecar --image spec-sidecar:0.1.0"
    assert "docs/adopt.md" in notes and "vLLM (" not in notes
    measuring = _notes(tmp_path / "m", *COMBINATIONS["measure-only"])
    assert "--measure-only" in measuring and "get and patch" not in measuring


def test_inject_with_the_notes_flags_fits_the_releases_objects() -> None:
    # What the user does after the install: the pod runs as the release's ServiceAccount, which the RoleBinding
    # binds, and the Service's ports name ports the injected pod has.
    docs = documents(render(*COMBINATIONS["monitoring"], release="adopt", namespace="inference"))
    source = (ROOT / "docs" / "adopt" / "gitops" / "vllm.yaml").read_text()
    done = subprocess.run(
        [str(ENTRY_POINT), "inject", "--namespace", "inference", "--service-account", "adopt-spec-sidecar"],
        input=source, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pod = one(documents(done.stdout), "Deployment")["spec"]["template"]["spec"]
    binding = one(docs, "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == "adopt-spec-sidecar"
    names = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
    numbers = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    for port in one(docs, "Service")["spec"]["ports"]:
        assert port["targetPort"] in names | numbers, port
    labels = one(documents(done.stdout), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "Service")["spec"]["selector"].items() <= labels.items(), json.dumps(labels)


def test_the_values_in_the_adoption_guide_render_and_validate(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "adopt.md").read_text()
    (snippet,) = [b.split("```", 1)[0] for b in guide.split("```yaml\n")[1:] if b.startswith("vllm:\n  enabled: false")]
    values = tmp_path / "values.yaml"
    values.write_text(snippet)
    docs = documents(render("-f", str(values), release="adopt", namespace="inference"))
    assert by_kind(docs, "Deployment") == [] and one(docs, "Service")["spec"]["selector"] == {
        "app.kubernetes.io/name": "qwen"
    }
    builtin = tmp_path / "builtin.yaml"
    builtin.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in OPERATOR_KINDS]))
    result = run([tools()["kubernetes-validate"], "--strict", builtin], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
