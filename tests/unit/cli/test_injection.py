"""`spec-sidecar inject`'s transformation on YAML text: what it finds, what it adds, what it leaves alone."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli.inject import inject_text
from sidecar.core.injection import InjectionError, InjectOptions, looks_like_vllm, vllm_port

ADOPT = Path(__file__).resolve().parents[3] / "docs" / "adopt"
OPTIONS = InjectOptions(image="registry.example.internal/spec-sidecar:0.1.0")

PLAIN = textwrap.dedent(
    """\
    # The team's engine.
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: vllm
      namespace: ml
    spec:
      selector:
        matchLabels: {app: vllm}
      template:
        metadata:
          labels: {app: vllm}
        spec:
          containers:
            - name: engine  # keep this comment
              image: vllm/vllm-openai:v0.32.0
              args: ["--model", "Qwen/Qwen2.5-7B", "--port", "8200"]
    """
)


def injected(text: str, options: InjectOptions = OPTIONS) -> list[dict[str, Any]]:
    out, _notes = inject_text(text, options)
    return [d for d in yaml.safe_load_all(out) if d]


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def sidecar_of(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod(doc)["containers"] if c["name"] == "spec-sidecar")


def test_the_sidecar_is_told_vllms_port_the_deployment_its_namespace_and_the_engines_container_name() -> None:
    (deployment,) = injected(PLAIN)
    sidecar = sidecar_of(deployment)
    assert sidecar["image"] == OPTIONS.image
    assert sidecar["args"] == [
        "run", "--vllm-url", "http://127.0.0.1:8200", "--listen", "0.0.0.0:8081", "--metrics-listen",
        "0.0.0.0:8082", "--deployment", "vllm", "--namespace", "ml", "--container", "engine",
    ]  # fmt: skip
    assert [c["name"] for c in pod(deployment)["containers"]] == ["engine", "spec-sidecar"]


def test_only_the_sidecar_container_gets_an_api_token_under_its_own_service_account() -> None:
    (deployment,) = injected(PLAIN)
    spec = pod(deployment)
    assert spec["serviceAccountName"] == "vllm-spec-sidecar"
    assert spec["automountServiceAccountToken"] is False
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert token in [m["mountPath"] for m in sidecar_of(deployment)["volumeMounts"]]
    assert "volumeMounts" not in spec["containers"][0]
    assert [v["name"] for v in spec["volumes"]] == ["sidecar-tmp", "kube-api-access"]


def test_injecting_twice_gives_the_same_yaml_byte_for_byte_with_every_option() -> None:
    options = InjectOptions(image="x/spec-sidecar:1", with_rbac=True, with_service=True, config=(("dry_run", "true"),))
    once, _ = inject_text(PLAIN, options)
    twice, _ = inject_text(once, options)
    assert twice == once
    assert once.count("\nkind: Role\n") == 1 and once.count("\nkind: Service\n") == 1


def test_comments_key_order_and_flow_style_of_the_input_survive() -> None:
    out, _ = inject_text(PLAIN, OPTIONS)
    assert out.startswith("# The team's engine.\napiVersion: apps/v1\nkind: Deployment\n")
    assert "- name: engine  # keep this comment\n" in out
    assert 'args: ["--model", "Qwen/Qwen2.5-7B", "--port", "8200"]' in out
    assert "matchLabels: {app: vllm}" in out


def test_kubectl_list_output_gets_the_rbac_objects_as_items_of_the_same_list() -> None:
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": list(yaml.safe_load_all(PLAIN))})
    (doc,) = injected(listed, InjectOptions(image="s:1", with_rbac=True))
    assert doc["kind"] == "List"
    assert [i["kind"] for i in doc["items"]] == ["Deployment", "ServiceAccount", "Role", "RoleBinding"]
    assert sidecar_of(doc["items"][0])["args"][-1] == "engine"


def test_a_kustomize_resource_list_stays_a_resource_list_with_its_function_config() -> None:
    resource_list = {
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "items": list(yaml.safe_load_all(PLAIN)),
        "functionConfig": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inject"}},
    }
    (doc,) = injected(yaml.safe_dump(resource_list, sort_keys=False))
    assert doc["kind"] == "ResourceList" and doc["functionConfig"]["metadata"]["name"] == "inject"
    assert sidecar_of(doc["items"][0])["name"] == "spec-sidecar"


def test_rbac_binds_the_pods_own_service_account_and_says_the_engine_shares_its_token() -> None:
    text = PLAIN.replace("      containers:", "      serviceAccountName: model-reader\n      containers:")
    out, notes = inject_text(text, InjectOptions(image="s:1", with_rbac=True))
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert pod(docs[0])["serviceAccountName"] == "model-reader"
    assert "automountServiceAccountToken" not in pod(docs[0])
    assert [d["kind"] for d in docs] == ["Deployment", "Role", "RoleBinding"]  # no ServiceAccount: not ours
    assert docs[2]["subjects"] == [{"kind": "ServiceAccount", "name": "model-reader", "namespace": "ml"}]
    assert len(notes) == 1 and "model-reader" in notes[0] and "--service-account" in notes[0]


def test_measure_only_gives_no_deployment_flags_no_token_and_no_rbac() -> None:
    (deployment,) = injected(PLAIN, InjectOptions(image="s:1", measure_only=True, with_rbac=True))
    args = sidecar_of(deployment)["args"]
    assert "--deployment" not in args and args[:3] == ["run", "--vllm-url", "http://127.0.0.1:8200"]
    assert [v["name"] for v in pod(deployment)["volumes"]] == ["sidecar-tmp"]
    assert "serviceAccountName" not in pod(deployment)


def test_a_deployment_without_namespace_lets_the_sidecar_use_its_pods_namespace() -> None:
    (deployment,) = injected(PLAIN.replace("  namespace: ml\n", ""))
    assert "--namespace" not in sidecar_of(deployment)["args"]
    (given,) = injected(PLAIN.replace("  namespace: ml\n", ""), InjectOptions(image="s:1", namespace="prod"))
    assert sidecar_of(given)["args"][sidecar_of(given)["args"].index("--namespace") + 1] == "prod"


def test_config_values_become_environment_variables_quoted_so_kubectl_reads_strings() -> None:
    options = InjectOptions(image="s:1", config=(("window", "120"), ("dry_run", "yes")))
    out, _ = inject_text(PLAIN, options)
    env = {e["name"]: e.get("value") for e in sidecar_of(next(yaml.safe_load_all(out)))["env"]}
    # PyYAML reads YAML 1.1 as kubectl does: an unquoted yes would be the boolean True.
    assert env["SPEC_SIDECAR_DRY_RUN"] == "yes" and env["SPEC_SIDECAR_WINDOW"] == "120"


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"name": "x", "image": "vllm/vllm-openai:v0.32.0"}, True),
        ({"name": "x", "image": "registry.local/mirror/vllm-cpu@sha256:abc"}, True),
        ({"name": "x", "image": "ghcr.io/llm-d/llm-d-cuda:v0.3.0", "command": ["vllm", "serve"]}, True),
        (
            {"name": "x", "image": "python:3.12", "command": ["python", "-m", "vllm.entrypoints.openai.api_server"]},
            True,
        ),
        (
            {"name": "x", "image": "img", "command": ["sh", "-c"], "args": ["pip list; exec vllm serve m --port 9"]},
            True,
        ),
        ({"name": "vllm", "image": "img"}, True),
        (
            {"name": "routing-proxy", "image": "ghcr.io/llm-d/llm-d-routing-sidecar", "args": ["--vllm-port=8200"]},
            False,
        ),
        (
            {"name": "router", "image": "lmcache/lmstack-router:latest", "args": ["--routing-logic", "roundrobin"]},
            False,
        ),
        ({"name": "spec-sidecar", "image": "spec-sidecar:0.1.0", "args": ["run", "--vllm-url", "x"]}, False),
    ],
)
def test_a_vllm_container_is_known_by_its_image_its_name_or_how_it_starts(
    container: dict[str, Any], expected: bool
) -> None:
    assert looks_like_vllm(container) is expected


@pytest.mark.parametrize(
    ("container", "port"),
    [
        ({"args": ["--port", "8200"]}, 8200),
        ({"args": ["--port=9000", "--port=9001"]}, 9001),
        ({"command": ["sh", "-c", "vllm serve m --host 0.0.0.0 --port 7000"]}, 7000),
        ({"args": ["--model", "m"], "ports": [{"containerPort": 8080}]}, 8080),
        ({"args": ["--model", "m"]}, 8000),
    ],
)
def test_vllms_port_comes_from_its_args_then_its_declared_port_then_vllms_default(
    container: dict[str, Any], port: int
) -> None:
    assert vllm_port(container) == port


def test_two_vllm_looking_containers_are_refused_naming_both_and_the_flag() -> None:
    text = PLAIN.replace(
        "      containers:\n", "      containers:\n        - name: second\n          image: vllm/vllm-openai:v0.32.0\n"
    )
    with pytest.raises(InjectionError, match=r"'second' and 'engine'.*--container"):
        inject_text(text, OPTIONS)
    (deployment,) = injected(text, InjectOptions(image="s:1", container="engine"))
    assert sidecar_of(deployment)["args"][-1] == "engine"


def test_no_vllm_container_is_refused_with_where_it_looked() -> None:
    text = PLAIN.replace("vllm/vllm-openai:v0.32.0", "nginx:1.27")
    with pytest.raises(InjectionError, match=r"no vLLM container found \(looked in Deployment vllm.*--container"):
        inject_text(text, OPTIONS)
    with pytest.raises(InjectionError, match=r"no container named 'gpu' \(its containers: engine\)"):
        inject_text(text, InjectOptions(image="s:1", container="gpu"))


def test_input_without_any_workload_is_refused_naming_what_it_holds() -> None:
    with pytest.raises(InjectionError, match=r"no Deployment or other pod template \(it holds: Service\)"):
        inject_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n", OPTIONS)


def test_production_stack_engine_gets_the_sidecar_and_its_router_is_left_alone() -> None:
    source = (ADOPT / "production-stack.yaml").read_text()
    engine, router = injected(source)
    assert sidecar_of(engine)["args"][sidecar_of(engine)["args"].index("--container") + 1] == "vllm"
    assert router == [d for d in yaml.safe_load_all(source) if d][1]


def test_llm_d_decode_sidecar_reads_vllm_behind_the_routing_proxy_on_8200() -> None:
    (decode,) = injected((ADOPT / "llm-d.yaml").read_text())
    assert sidecar_of(decode)["args"][2] == "http://127.0.0.1:8200"
    assert pod(decode)["initContainers"][0]["name"] == "routing-proxy"
    assert pod(decode)["serviceAccountName"] == "ms-llama-llm-d-modelservice"  # its own, kept


def test_a_kserve_serving_runtime_gets_a_measuring_sidecar_and_the_inference_service_is_untouched() -> None:
    source = (ADOPT / "kserve.yaml").read_text()
    out, notes = inject_text(source, OPTIONS)
    runtime, isvc = [d for d in yaml.safe_load_all(out) if d]
    sidecar = next(c for c in runtime["spec"]["containers"] if c["name"] == "spec-sidecar")
    assert sidecar["args"][2] == "http://127.0.0.1:8080" and "--deployment" not in sidecar["args"]
    assert [v["name"] for v in runtime["spec"]["volumes"]] == ["sidecar-tmp"]
    assert isvc == [d for d in yaml.safe_load_all(source) if d][1]
    assert any("measures and exports only" in n for n in notes)


def test_what_the_api_server_wrote_is_dropped_so_the_output_applies_like_a_manifest() -> None:
    served = yaml.safe_load(PLAIN)
    served["metadata"].update(
        resourceVersion="243", uid="u", generation=3, creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}], annotations={"deployment.kubernetes.io/revision": "3", "team": "ml"},
    )  # fmt: skip
    served["status"] = {"replicas": 1}
    (deployment,) = injected(yaml.safe_dump(served))
    assert "status" not in deployment
    assert set(deployment["metadata"]) == {"name", "namespace", "annotations"}
    assert deployment["metadata"]["annotations"] == {"team": "ml"}


def test_the_service_name_is_cut_to_the_63_characters_a_service_may_have() -> None:
    long = "a-deployment-name-that-is-long-enough-to-overflow-a-dns-label"
    docs = injected(PLAIN.replace("name: vllm\n  namespace", f"name: {long}\n  namespace"), InjectOptions(
        image="s:1", with_rbac=True, with_service=True))  # fmt: skip
    names = {d["kind"]: d["metadata"]["name"] for d in docs}
    assert names["Role"] == f"{long}-spec-sidecar"  # a Role's name may be longer
    assert len(names["Service"]) <= 63 and f"{long}-spec-sidecar".startswith(names["Service"])
    assert not names["Service"].endswith("-")


def test_kubectl_style_lists_under_their_key_stay_unindented_in_what_is_added() -> None:
    # `kubectl get -o yaml` writes list dashes level with their key; the added container follows that layout.
    kubectl_style = yaml.safe_dump(yaml.safe_load(PLAIN), sort_keys=False)
    assert "      containers:\n      - name: engine\n" in kubectl_style
    out, _ = inject_text(kubectl_style, OPTIONS)
    assert "\n      - name: spec-sidecar\n" in out
    assert "\n        args:\n        - run\n        - --vllm-url\n" in out
