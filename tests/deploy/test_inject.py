"""`spec-sidecar inject` against the chart and the recipes: the container it adds is the chart's, key for key, and
what it writes for each recipe in docs/adopt.md passes kubernetes-validate --strict.

The inject runs are the installed entry point in a subprocess, fed on stdin as in `kubectl get ... | inject`.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tooling import ROOT, Manifest, by_kind, container, documents, one, render, run, tools

ENTRY_POINT = Path(sys.executable).with_name("spec-sidecar")
ADOPT = ROOT / "docs" / "adopt"
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
# Kinds kubernetes-validate has no schema for (KServe's CRDs): what is checked of them is in the KServe test.
CRD_KINDS = {"ServingRuntime", "InferenceService"}
RECIPES = {
    "production-stack.yaml": ("--with-rbac", "--with-service"),
    "llm-d.yaml": ("--with-rbac",),
    "kserve.yaml": (),
    "gitops/vllm.yaml": ("--namespace", "inference", "--with-rbac", "--with-service"),
}


def inject(text: str, *args: str) -> str:
    done = subprocess.run(
        [str(ENTRY_POINT), "inject", *args], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def chart_config_flags(deployment: Manifest) -> list[str]:
    """The chart's sidecar.config as inject's --config flags (read back from the rendered env)."""
    env = container(deployment, "spec-sidecar")["env"]
    flags: list[str] = []
    for entry in env:
        if entry["name"].startswith("SPEC_SIDECAR_"):
            flags += ["--config", f"{entry['name'].removeprefix('SPEC_SIDECAR_').lower()}={entry['value']}"]
    return flags


def without_sidecar(deployment: Manifest) -> Manifest:
    """The chart's Deployment as someone who owns vLLM would write it: no sidecar, no token plumbing."""
    bare = copy.deepcopy(deployment)
    pod = bare["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "spec-sidecar"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in {"sidecar-tmp", "kube-api-access"}]
    del pod["serviceAccountName"], pod["automountServiceAccountToken"]
    return bare


def test_the_injected_deployment_equals_the_charts_own_with_the_same_settings() -> None:
    docs = documents(render(release="demo", namespace="inference"))
    chart = one(docs, "Deployment")
    image = container(chart, "spec-sidecar")["image"]
    out = inject(
        yaml.safe_dump(without_sidecar(chart)),
        "--image", image, "--service-account", chart["spec"]["template"]["spec"]["serviceAccountName"],
        *chart_config_flags(chart),
    )  # fmt: skip
    (injected,) = documents(out)
    assert injected == chart


def test_measure_only_adds_the_charts_measure_only_container_and_volumes() -> None:
    chart = one(documents(render("--set", "sidecar.actuator.enabled=false")), "Deployment")
    image = container(chart, "spec-sidecar")["image"]
    out = inject(yaml.safe_dump(without_sidecar(chart)), "--measure-only", "--image", image, *chart_config_flags(chart))
    (injected,) = documents(out)
    assert injected["spec"]["template"]["spec"]["containers"] == chart["spec"]["template"]["spec"]["containers"]
    assert injected["spec"]["template"]["spec"]["volumes"] == chart["spec"]["template"]["spec"]["volumes"]


def test_with_rbac_writes_the_charts_role_and_binding_for_the_one_deployment() -> None:
    docs = documents(render(release="demo", namespace="inference"))
    chart = one(docs, "Deployment")
    out = documents(inject(yaml.safe_dump(without_sidecar(chart)), "--with-rbac"))
    name = chart["metadata"]["name"]
    role = one(out, "Role")
    assert role["metadata"]["name"] == f"{name}-spec-sidecar" and role["metadata"]["namespace"] == "inference"
    assert role["rules"] == one(docs, "Role")["rules"]
    binding = one(out, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{name}-spec-sidecar",
    }
    account = one(out, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "inference"}
    ]
    assert account["automountServiceAccountToken"] is False
    assert one(out, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_with_service_writes_the_charts_ports_through_the_tap() -> None:
    docs = documents(render())
    chart = one(docs, "Deployment")
    service = one(documents(inject(yaml.safe_dump(without_sidecar(chart)), "--with-service")), "Service")
    assert service["spec"]["ports"] == one(docs, "Service")["spec"]["ports"]
    assert service["spec"]["selector"] == chart["spec"]["selector"]["matchLabels"]


# llm-d's routing proxy is a native sidecar (an init container with restartPolicy: Always): Kubernetes 1.29 and
# newer accept it by default, so its recipe is validated from there.
OLDEST = {"llm-d.yaml": "1.29.0"}


def validate(docs: list[Manifest], tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    for version in (OLDEST.get(name, KUBERNETES_VERSIONS[0]), KUBERNETES_VERSIONS[1]):
        result = run([tools()["kubernetes-validate"], "--strict", "-k", version, path], check=False)
        assert result.returncode == 0, f"{name} on {version}:\n{result.stdout}{result.stderr}"
        assert result.stdout.count(" passed for resource ") == len(docs)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipes_output_passes_strict_kubernetes_validation(recipe: str, tmp_path: Path) -> None:
    out = documents(inject((ADOPT / recipe).read_text(), *RECIPES[recipe]))
    builtin = [d for d in out if d["kind"] not in CRD_KINDS]
    validate(builtin, tmp_path, recipe)
    for workload in by_kind(out, "Deployment"):
        names = [c["name"] for c in workload["spec"]["template"]["spec"]["containers"]]
        assert names.count("spec-sidecar") <= 1


def test_the_kserve_runtimes_containers_pass_strict_validation_as_a_pods(tmp_path: Path) -> None:
    # kubernetes-validate knows no ServingRuntime; its containers and volumes are core/v1 Containers and Volumes
    # (KServe's ServingRuntimePodSpec embeds them), so they are checked inside a Pod. The ServingRuntime's own
    # fields (supportedModelFormats, multiModel, ...) are not checked here: they come through unchanged.
    runtime = one(documents(inject((ADOPT / "kserve.yaml").read_text())), "ServingRuntime")
    as_pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-runtime-check"},
        "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"]},
    }
    validate([as_pod], tmp_path, "kserve-pod")
    source = one(documents((ADOPT / "kserve.yaml").read_text()), "ServingRuntime")
    rest = {"containers", "volumes"}
    assert {k: v for k, v in runtime["spec"].items() if k not in rest} == {
        k: v for k, v in source["spec"].items() if k not in rest
    }
    assert runtime["spec"]["containers"][0] == source["spec"]["containers"][0]  # the engine, untouched


def test_inject_as_a_helm_post_renderer_adds_the_sidecar_to_the_charts_engine_only(tmp_path: Path) -> None:
    # The production-stack recipe: a chart whose templates render the engine and router Deployments, and inject
    # as the executable helm pipes every rendered manifest through (helm 3's --post-renderer).
    chart = tmp_path / "stack"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: stack\nversion: 0.1.0\n")
    (chart / "templates" / "engine.yaml").write_text((ADOPT / "production-stack.yaml").read_text())
    script = tmp_path / "inject.sh"
    script.write_text(f"#!/bin/sh\nexec {ENTRY_POINT} inject --with-rbac --with-service\n")
    script.chmod(0o755)
    out = documents(run([tools()["helm"], "template", "vllm", chart, "--post-renderer", script]).stdout)
    engine, router = by_kind(out, "Deployment")
    assert [c["name"] for c in engine["spec"]["template"]["spec"]["containers"]] == ["vllm", "spec-sidecar"]
    assert [c["name"] for c in router["spec"]["template"]["spec"]["containers"]] == ["router-container"]
    assert {d["kind"] for d in out} == {"Deployment", "ServiceAccount", "Role", "RoleBinding", "Service"}
