"""The Helm chart, checked by the real helm binary and validated the way a cluster would (offline).

Built-in kinds are validated by kubernetes-validate --strict (unknown fields fail). The Prometheus Operator kinds
(ServiceMonitor, PrometheusRule) are not in its schemas, so they are checked twice with the operator's own
published models: the generated validators (patterns, enums, required fields) and the TypeScript interfaces under
`tsc --strict` (excess-property checks reject unknown or misspelled fields). What neither can check: that the
PromQL in the rules is right (promtool does that in test_alerts.py) and that selectors match a live Prometheus.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.tooling import (
    CHART,
    RULES,
    Manifest,
    by_kind,
    container,
    documents,
    helm,
    node_script,
    one,
    render,
    run,
    tools,
    typescript_check,
)

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
ALL_OPTIONAL = (
    "--set",
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    # The ServiceMonitor scrapes vLLM's own port: the NetworkPolicy must admit Prometheus there.
    "--set-json",
    f"networkPolicy.vllmFrom=[{json.dumps(MONITORING)}]",
)
NO_GPU = ("--set", "vllm.gpu.count=0", "--set-json", "vllm.speculativeConfig={}")
MEASURE_ONLY = ("--set", "sidecar.actuator.enabled=false")
PRODUCTION = ("-f", str(CHART / "values-production-example.yaml"))
COMBINATIONS = {
    "defaults": (),
    "all-optional": ALL_OPTIONAL,
    "no-gpu": NO_GPU,
    "measure-only": MEASURE_ONLY,
    "production": PRODUCTION,
}
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and kubernetes-validate's newest.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
OPERATOR_KINDS = ("ServiceMonitor", "PrometheusRule")


@pytest.fixture(scope="module", params=sorted(COMBINATIONS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param, render(*COMBINATIONS[request.param])


def test_helm_lint_strict_passes_for_every_value_combination() -> None:
    for name, args in COMBINATIONS.items():
        result = helm("lint", "--strict", CHART, *args, check=False)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


def test_every_rendered_builtin_object_passes_strict_kubernetes_validation(
    rendered: tuple[str, str], tmp_path: Path
) -> None:
    name, text = rendered
    builtin = [d for d in documents(text) if d["kind"] not in OPERATOR_KINDS]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    for version in KUBERNETES_VERSIONS:
        result = run([tools()["kubernetes-validate"], "--strict", "-k", version, path], check=False)
        assert result.returncode == 0, f"{name} on {version}:\n{result.stdout}{result.stderr}"
        assert result.stdout.count(" passed for resource ") == len(builtin)


def test_kubernetes_validate_strict_rejects_a_misspelled_field_in_the_chart_output(tmp_path: Path) -> None:
    # Shows the validation above has teeth: the same pipeline fails once one field is misspelled.
    deployment = one(documents(render()), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][1]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run([tools()["kubernetes-validate"], "--strict", path], check=False)
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def _operator_objects() -> list[Manifest]:
    docs = documents(render(*ALL_OPTIONAL)) + documents(render(*PRODUCTION))
    return [d for d in docs if d["kind"] in OPERATOR_KINDS]


def test_servicemonitor_and_prometheusrule_pass_the_operators_own_validators(tmp_path: Path) -> None:
    objects = _operator_objects()
    assert sorted({d["kind"] for d in objects}) == sorted(OPERATOR_KINDS)
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(objects))
    result = node_script(tmp_path, Path(__file__).with_name("validate_crds.mjs"), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("VALID ") == len(objects)


def _operator_typescript(objects: list[Manifest]) -> str:
    models = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"
    lines = [f'import type {{ I{kind} }} from "{models}/{kind}";' for kind in OPERATOR_KINDS]
    for i, obj in enumerate(objects):
        lines.append(f"export const o{i}: I{obj['kind']} = {json.dumps(obj, indent=2)};")
    return "\n".join(lines) + "\n"


def test_servicemonitor_and_prometheusrule_have_no_field_the_operator_types_lack(tmp_path: Path) -> None:
    result = typescript_check(tmp_path, {"objects.ts": _operator_typescript(_operator_objects())})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_type_check_rejects_a_misspelled_servicemonitor_field(tmp_path: Path) -> None:
    monitor = next(d for d in _operator_objects() if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    result = typescript_check(tmp_path, {"objects.ts": _operator_typescript([monitor])})
    assert result.returncode != 0
    assert "scrapeTimout" in result.stdout


def _role_rules(docs: list[Manifest]) -> list[Manifest]:
    return list(one(docs, "Role")["rules"])


def test_rbac_names_the_one_deployment_and_lease_and_has_no_wildcards() -> None:
    docs = documents(render(release="llama", namespace="ml"))
    rules = _role_rules(docs)
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), rule
    deployment = one(docs, "Deployment")["metadata"]["name"]
    grants = {
        (r["apiGroups"][0], r["resources"][0], v, tuple(r.get("resourceNames", ()))) for r in rules for v in r["verbs"]
    }
    assert grants == {
        ("apps", "deployments", "get", (deployment,)),
        ("apps", "deployments", "patch", (deployment,)),
        ("coordination.k8s.io", "leases", "get", (deployment + "-spec-sidecar",)),
        ("coordination.k8s.io", "leases", "update", (deployment + "-spec-sidecar",)),
        ("coordination.k8s.io", "leases", "create", ()),
        ("", "events", "create", ()),
    }


def test_the_sidecar_is_told_the_deployment_it_runs_in_and_its_own_pod() -> None:
    docs = documents(render(release="llama", namespace="ml"))
    deployment = one(docs, "Deployment")
    sidecar = container(deployment, "spec-sidecar")
    args = sidecar["args"]
    assert args[args.index("--deployment") + 1] == deployment["metadata"]["name"]
    assert args[args.index("--namespace") + 1] == "ml"
    assert args[args.index("--container") + 1] == "vllm"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"] if "valueFrom" in e} == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
    }
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "Role")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": "ml",
        }
    ]


def test_measure_only_mode_creates_no_role_and_mounts_no_api_token() -> None:
    docs = documents(render(*MEASURE_ONLY))
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert all(v["name"] != "kube-api-access" for v in pod["volumes"])
    assert "--deployment" not in container(one(docs, "Deployment"), "spec-sidecar")["args"]


def test_only_the_sidecar_container_gets_a_kubernetes_api_token() -> None:
    pod = one(documents(render()), "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {c["name"]: [m["mountPath"] for m in c.get("volumeMounts", [])] for c in pod["containers"]}
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert token_dir in mounts["spec-sidecar"]
    assert token_dir not in mounts["vllm"]
    projected = next(v for v in pod["volumes"] if v["name"] == "kube-api-access")["projected"]["sources"]
    assert [next(iter(s)) for s in projected] == ["serviceAccountToken", "configMap", "downwardAPI"]


def test_sidecar_runs_non_root_read_only_without_capabilities_and_with_small_resources() -> None:
    for args in COMBINATIONS.values():
        sidecar = container(one(documents(render(*args)), "Deployment"), "spec-sidecar")
        sc = sidecar["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        # The worst scrape the default bounds admit peaks at 394 MiB for the sidecar and its parse worker together,
        # which take about 100 MiB at rest (docs/benchmarks.md, "The parse worker").
        assert sidecar["resources"]["limits"]["memory"] == "512Mi"
        assert sidecar["resources"]["requests"]["memory"] == "128Mi"
        assert "nvidia.com/gpu" not in json.dumps(sidecar["resources"])
        assert {m["mountPath"] for m in sidecar["volumeMounts"]} >= {"/tmp"}


def test_sidecar_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    sidecar = container(one(documents(render()), "Deployment"), "spec-sidecar")
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_vllm_gets_a_startup_budget_before_liveness_can_restart_it() -> None:
    vllm = container(one(documents(render()), "Deployment"), "vllm")
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"


def test_service_sends_openai_traffic_through_the_tap_and_exposes_both_metrics_ports() -> None:
    docs = documents(render())
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    deployment = one(docs, "Deployment")
    tap_port = {p["name"]: p["containerPort"] for p in container(deployment, "spec-sidecar")["ports"]}
    vllm_port = {p["name"]: p["containerPort"] for p in container(deployment, "vllm")["ports"]}
    assert ports["http"]["port"] == 8000 and ports["http"]["targetPort"] == "tap"
    assert ports["metrics"]["port"] == 8002 and ports["metrics"]["targetPort"] == "metrics"
    assert ports["vllm"]["targetPort"] == "vllm-http"
    assert tap_port == {"tap": 8081, "metrics": 8082} and vllm_port == {"vllm-http": 8000}
    sidecar_args = container(deployment, "spec-sidecar")["args"]
    assert sidecar_args[sidecar_args.index("--vllm-url") + 1] == "http://127.0.0.1:8000"
    assert sidecar_args[sidecar_args.index("--listen") + 1] == "0.0.0.0:8081"
    assert sidecar_args[sidecar_args.index("--metrics-listen") + 1] == "0.0.0.0:8082"


def test_servicemonitor_scrapes_both_endpoints_under_the_job_names_the_alerts_use() -> None:
    monitor = one(documents(render(*ALL_OPTIONAL)), "ServiceMonitor")
    jobs = {
        e["port"]: next(r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job")
        for e in monitor["spec"]["endpoints"]
    }
    assert jobs == {"metrics": "spec-sidecar", "vllm": "vllm"}
    assert 'job="spec-sidecar"' in RULES.read_text()


def test_vllm_args_carry_the_speculative_config_as_one_json_argument() -> None:
    vllm = container(one(documents(render(*PRODUCTION)), "Deployment"), "vllm")
    args = vllm["args"]
    assert args.count("--speculative-config") == 1
    config = json.loads(args[args.index("--speculative-config") + 1])
    assert config == yaml.safe_load((CHART / "values-production-example.yaml").read_text())["vllm"]["speculativeConfig"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_no_gpu_combination_requests_no_gpu_and_passes_no_speculative_config() -> None:
    vllm = container(one(documents(render(*NO_GPU)), "Deployment"), "vllm")
    assert "nvidia.com/gpu" not in json.dumps(vllm["resources"])
    assert "--speculative-config" not in vllm["args"]


def test_sidecar_config_values_become_the_sidecars_environment_variables() -> None:
    sidecar = container(one(documents(render("--set", "sidecar.config.threshold=0.42")), "Deployment"), "spec-sidecar")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["SPEC_SIDECAR_THRESHOLD"] == "0.42"


def test_every_sidecar_config_key_in_the_schema_is_a_real_setting() -> None:
    from sidecar.settings import Settings

    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["sidecar"]["properties"]["config"]["properties"])
    assert keys <= set(Settings.model_fields), keys - set(Settings.model_fields)
    # The chart sets these itself from other values: they must not be settable twice.
    chart_sets = {"vllm_url", "listen", "metrics_listen", "deployment", "namespace", "container", "deployment_file"}
    assert not keys & chart_sets


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "sidecar.config.treshold=0.4"), "treshold"),
        (("--set", "vllm.gpu.count=-1"), "gpu.count"),
        (("--set", "serviceMonitor.interval=15 seconds"), "interval"),
        (("--set", "vllm.extraArgs[0]=--disable-log-stats"), "--disable-log-stats"),
        (("--set", "vllm.extraArgs[0]=--speculative-config={}"), "speculativeConfig"),
        (("--set", "serviceMonitor.enabled=true"), "networkPolicy.vllmFrom"),
        (("--set", "networkPolicy.apiFrom=everyone"), "apiFrom"),
    ],
)
def test_the_chart_refuses_values_that_cannot_work(args: tuple[str, ...], message: str) -> None:
    result = helm("template", "demo", CHART, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_chart_refuses_a_speculative_config_string_that_is_not_json(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"vllm": {"speculativeConfig": '{"method": '}}))
    result = helm("template", "demo", CHART, "-f", values, check=False)
    assert result.returncode != 0
    assert "vllm.speculativeConfig is not a JSON object" in result.stderr


def test_a_speculative_config_object_in_user_values_replaces_the_default_whole(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"vllm": {"speculativeConfig": {"method": "mtp", "num_speculative_tokens": 1}}}))
    args = container(one(documents(render("-f", str(values))), "Deployment"), "vllm")["args"]
    assert json.loads(args[args.index("--speculative-config") + 1]) == {"method": "mtp", "num_speculative_tokens": 1}


def test_prometheusrule_carries_the_rule_file_with_runbook_links_rebased() -> None:
    base = "https://docs.example.invalid/spec-sidecar/runbook.md"
    docs = documents(render(*ALL_OPTIONAL, "--set", f"prometheusRule.runbookBaseUrl={base}"))
    rule = one(docs, "PrometheusRule")
    expected = yaml.safe_load(RULES.read_text().replace("docs/runbook.md#", base + "#"))
    assert rule["spec"] == expected
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith(base + "#") for u in urls)


def test_dashboard_configmap_is_labelled_for_grafanas_sidecar_and_holds_every_committed_dashboard() -> None:
    docs = documents(render(*ALL_OPTIONAL))
    configmap = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = sorted((CHART.parents[2] / "grafana" / "dashboards").glob("*.json"))
    assert committed, "no dashboards committed"
    assert sorted(configmap["data"]) == [p.name for p in committed]
    for path in committed:
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_optional_objects_are_absent_by_default() -> None:
    kinds = sorted({d["kind"] for d in documents(render())})
    assert kinds == ["Deployment", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"]


def _ingress_by_port(docs: list[Manifest]) -> dict[str, list[dict[str, object]] | None]:
    """Port name -> the peers its rule admits (None: any source); a port without a rule is absent."""
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"] or []
    out: dict[str, list[dict[str, object]] | None] = {}
    for rule in rules:
        for port in rule["ports"]:
            out[port["port"]] = rule.get("from")
    return out


def test_the_network_policy_admits_api_clients_to_the_tap_the_cluster_to_metrics_and_no_one_to_vllm() -> None:
    docs = documents(render())
    policy = one(docs, "NetworkPolicy")
    deployment = one(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert _ingress_by_port(docs) == {"tap": None, "metrics": [{"namespaceSelector": {}}]}
    # Every port the policy names is a port of the pod's containers (a wrong name would silently admit nothing).
    named = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert set(_ingress_by_port(docs)) <= named
    assert "vllm-http" in named


def test_the_network_policy_takes_each_ports_peers_from_values_and_can_be_turned_off(tmp_path: Path) -> None:
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"networkPolicy": {"apiFrom": [gateway], "metricsFrom": [], "vllmFrom": [MONITORING]}})
    )
    assert _ingress_by_port(documents(render("-f", str(values)))) == {"tap": [gateway], "vllm-http": [MONITORING]}
    assert _ingress_by_port(documents(render(*PRODUCTION)))["vllm-http"] == [MONITORING]
    kinds = {d["kind"] for d in documents(render("--set", "networkPolicy.enabled=false"))}
    assert "NetworkPolicy" not in kinds


def test_the_packaged_chart_carries_the_rules_and_dashboards_behind_its_symlinks(tmp_path: Path) -> None:
    helm("package", CHART, "--destination", tmp_path)
    (package,) = tmp_path.glob("spec-sidecar-*.tgz")
    with tarfile.open(package) as tar:
        members = {m.name: m for m in tar.getmembers()}
        rules = members["spec-sidecar/files/alerts/spec-sidecar-rules.yaml"]
        assert rules.isfile()
        extracted = tar.extractfile(rules)
        assert extracted is not None and extracted.read().decode() == RULES.read_text()
    docs = documents(helm("template", "demo", package, *ALL_OPTIONAL).stdout)
    assert one(docs, "PrometheusRule")["spec"]["groups"]


def _render_notes(tmp_path: Path, *args: str) -> str:
    # `helm install --dry-run` needs a cluster here, and `helm template` skips NOTES.txt: render the same file
    # through `tpl` from a copy of the chart, with the same values and helpers.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, symlinks=False)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-under-test.txt") . | indent 2 }}\n'
    )
    out = helm("template", "demo", chart, "-n", "ml", "--show-only", "templates/zz-notes.yaml", *args).stdout
    return str(yaml.safe_load(out.split("\n", 2)[2])["notes"])


def test_notes_tell_how_to_reach_the_api_and_whether_the_actuator_acts(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path)
    assert "kubectl -n ml port-forward svc/demo-spec-sidecar 8000:8000" in notes
    assert 'Speculation: {"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":3}' in notes
    assert "turns speculation off on this Deployment when acceptance stays below 0.5" in notes
    assert "dry-run mode" in _render_notes(tmp_path / "dry", "--set", "sidecar.config.dry_run=true")
    assert "measures and exports only" in _render_notes(tmp_path / "measure", *MEASURE_ONLY)


def test_the_values_file_in_the_install_guide_renders_and_validates(tmp_path: Path) -> None:
    guide = (CHART.parents[2] / "docs" / "install.md").read_text()
    snippet = guide.split("```yaml\n", 1)[1].split("```", 1)[0]
    values = tmp_path / "guide-values.yaml"
    values.write_text(snippet)
    docs = documents(render("-f", str(values)))
    builtin = tmp_path / "builtin.yaml"
    builtin.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in OPERATOR_KINDS]))
    result = run([tools()["kubernetes-validate"], "--strict", builtin], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    vllm = container(one(docs, "Deployment"), "vllm")
    assert json.loads(vllm["args"][vllm["args"].index("--speculative-config") + 1])["method"] == "eagle3"
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
