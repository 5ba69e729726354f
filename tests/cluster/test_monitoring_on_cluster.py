"""Monitoring for real: the Prometheus Operator turns the chart's ServiceMonitor and PrometheusRule into the config
and rules Prometheus 3 runs, Prometheus scrapes the sidecar, and the sidecar's auto-disable alert reaches an
Alertmanager webhook through the config the operator generated from an AlertmanagerConfig.

How the operator's output is run on this machine (kwok runs no containers), and the one change made to it (the
address), is in tests/cluster/monitoring.py. The scenario runs once for the module:

1. The chart is installed with serviceMonitor and prometheusRule enabled (and networkPolicy.vllmFrom listing
   Prometheus' namespace, which the chart requires); Prometheus, Alertmanager and AlertmanagerConfig custom
   resources are created; the operator generates their config.
2. `spec-sidecar run` (a process here, with a token of the chart's ServiceAccount and the vLLM pod's name, in
   fleet mode against this Prometheus) taps traffic to the fake engine; acceptance is poor at temperature > 0.
3. The sidecar turns speculation off with one patch (once the fleet has windows with speculation on for the
   measured speedup); the rollout replaces the pod; the engine then runs without speculation, as the new pod's
   would, and the fleet's windows off complete the measured speedup. SpecDecodeAutoDisabled (for: 1m) fires and
   reaches the webhook.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.core.measured_speedup import MIN_PER_BAND
from tests.cluster import chart
from tests.cluster.cluster import Cluster, Component, free_port, wait_until
from tests.cluster.monitoring import (
    gunzipped,
    monitoring_binaries,
    pod_filesystem,
    reloader_substituted,
    start_alertmanager,
    start_extra_controllers,
    start_operator,
    start_prometheus,
    with_local_addresses,
    without_local_addresses,
)
from tests.deploy.tooling import DASHBOARDS, RULES, exported_families
from tests.support.fake_vllm import FakeVllm, fake_vllm
from tests.support.http_stub import serve_http
from tests.support.sidecar_process import SidecarProcess, run_sidecar
from tests.support.sidecar_process import wait_until as wait_for
from tests.support.tap_upstream import MODEL

RELEASE = "llm"
NAME = "main"  # the Prometheus and Alertmanager custom resources
PROMETHEUS_POD = f"prometheus-{NAME}-0"
TEMPERATURES = (0.0, 0.5, 1.0, 1.0)  # mostly poor acceptance: the sidecar trips on the first full window
# The dashboard's $__rate_interval: Grafana makes it at least four scrape intervals (here 1 s).
RATE_INTERVAL = "1m"


@dataclass
class Webhook:
    """The Alertmanager webhook receiver the test serves: keeps every alert it is sent."""

    url: str = ""
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in list(self.alerts) if a["labels"]["alertname"] == name and a["status"] == "firing"]


@dataclass
class Stack:
    cluster: Cluster
    namespace: str
    prometheus: str
    alertmanager: str
    operator_config: dict[str, Any]
    running_config: dict[str, Any]
    local_ports: dict[int, int]
    webhook: Webhook
    sidecar: SidecarProcess
    engine: FakeVllm
    started: float
    components: list[Component]

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def query_range(self, promql: str) -> list[dict[str, Any]]:
        """Over the whole scenario, as a dashboard panel over the last 15 minutes would draw it."""
        params: dict[str, str | float] = {"query": promql, "start": self.started, "end": time.time(), "step": 2}
        body = httpx.get(f"{self.prometheus}/api/v1/query_range", params=params, timeout=20).json()
        assert body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def logs(self) -> str:
        return (
            "\n".join(f"--- {c.name}\n{c.tail(20)}" for c in self.components)
            + "\n--- sidecar\n"
            + (self.sidecar.log()[-3000:])
        )


def _webhook_server(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.alerts.extend(json.loads(body)["alerts"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    return Handler


def _custom_resources(namespace: str, webhook_url: str) -> list[dict[str, Any]]:
    """What a platform team writes: a Prometheus that picks up ServiceMonitors and PrometheusRules and sends alerts
    to the Alertmanager, whose routing comes from an AlertmanagerConfig with a webhook receiver."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus", "namespace": namespace}},
        {
            # What Prometheus' Kubernetes service discovery reads (the operator's documented RBAC, namespaced).
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "prometheus", "namespace": namespace},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "endpoints", "pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "prometheus", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
        },
        {
            "apiVersion": "monitoring.coreos.com/v1alpha1",
            "kind": "AlertmanagerConfig",
            "metadata": {"name": "webhook", "namespace": namespace},
            "spec": {
                "route": {
                    "receiver": "webhook",
                    "groupBy": ["alertname"],
                    "groupWait": "1s",
                    "groupInterval": "1s",
                    "repeatInterval": "1h",
                },
                "receivers": [{"name": "webhook", "webhookConfigs": [{"url": webhook_url, "sendResolved": True}]}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Alertmanager",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {"replicas": 1, "alertmanagerConfiguration": {"name": "webhook"}},
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {
                "version": "v3.16.0",
                "replicas": 1,
                "serviceAccountName": "prometheus",
                "serviceDiscoveryRole": "EndpointSlice",
                "scrapeInterval": "1s",
                "evaluationInterval": "1s",
                "serviceMonitorSelector": {},
                "serviceMonitorNamespaceSelector": {},
                "ruleSelector": {},
                "ruleNamespaceSelector": {},
                "alerting": {
                    "alertmanagers": [
                        {"namespace": namespace, "name": "alertmanager-operated", "port": "web", "apiVersion": "v2"}
                    ]
                },
            },
        },
    ]


def _chart_values(namespace: str) -> dict[str, Any]:
    prometheus_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    return {
        "serviceMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "1s"},
        "prometheusRule": {"enabled": True},
        "networkPolicy": {"vllmFrom": [prometheus_pods]},
    }


def _container_ports(workload_or_pod: dict[str, Any]) -> dict[str, int]:
    spec = workload_or_pod["spec"]
    spec = spec["template"]["spec"] if "template" in spec else spec
    return {port["name"]: port["containerPort"] for c in spec["containers"] for port in c.get("ports", [])}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _rule_files(cluster: Cluster, namespace: str) -> dict[str, dict[str, str]]:
    found = cluster.get_json("configmaps", "-n", namespace)["items"]
    prefix = f"prometheus-{NAME}-rulefiles-"
    return {c["metadata"]["name"]: c["data"] for c in found if c["metadata"]["name"].startswith(prefix)}


def _traffic(sidecar: SidecarProcess, stop: threading.Event) -> None:
    with httpx.Client(base_url=sidecar.url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            temperature = TEMPERATURES[i % len(TEMPERATURES)]
            body = {"model": MODEL, "prompt": f"request {i}", "max_tokens": 40, "temperature": temperature}
            with contextlib.suppress(httpx.HTTPError):  # a refused or cut request is the sidecar's to count
                client.post("/v1/completions", json=body)
            i += 1
            stop.wait(0.05)


def _vllm_args(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace))


@pytest.fixture(scope="module")
def monitoring_stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("monitoring")
    components: list[Component] = []
    hook = Webhook()
    namespace = chart.new_namespace(cluster, "monitoring")
    name = chart.fullname(RELEASE)
    try:
        with serve_http(_webhook_server(hook)) as hook_url:
            hook.url = hook_url + "/"
            yield from _run_stack(cluster, work, namespace, name=name, hook=hook, components=components)
    finally:
        for component in reversed(components):
            component.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _deploy(cluster: Cluster, work: Path, namespace: str, hook: Webhook, components: list[Component]) -> None:
    """The operator, the chart with its monitoring objects, the custom resources; returns once the operator has
    generated the config and the StatefulSets' pods are Ready."""
    monitoring_binaries()
    chart.install_crds(cluster)
    start_extra_controllers(cluster, work, components)
    operator = start_operator(cluster, namespace, work, components)
    chart.install(
        cluster, RELEASE, namespace, "--values", chart.values_file(work / "values.yaml", _chart_values(namespace))
    )
    for manifest in _custom_resources(namespace, hook.url):
        cluster.apply(manifest)

    def generated() -> bool:
        secrets = {s["metadata"]["name"] for s in cluster.get_json("secrets", "-n", namespace)["items"]}
        return {f"prometheus-{NAME}", f"alertmanager-{NAME}-generated"} <= secrets and bool(
            _rule_files(cluster, namespace)
        )

    wait_until("the operator's generated config", generated, [operator], 120)
    # The StatefulSets' pods (kwok makes them Ready): the Alertmanager's is what Prometheus discovers.
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"pod/alertmanager-{NAME}-0", f"pod/{PROMETHEUS_POD}", "-n", namespace,
        "--timeout", "120s",
    )  # fmt: skip


def _run_stack(
    cluster: Cluster, work: Path, namespace: str, *, name: str, hook: Webhook, components: list[Component]
) -> Iterator[Stack]:
    _deploy(cluster, work, namespace, hook, components)

    deployment = cluster.get_json("deployment", name, "-n", namespace)
    ports = _container_ports(deployment)
    token = cluster.kubectl("create", "token", "prometheus", "-n", namespace, "--duration", "1h").stdout.strip()
    pod_filesystem(work, _rule_files(cluster, namespace), token, cluster.ca_cert, namespace)
    sidecar_token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(sidecar_token, work / "sidecar-kubeconfig", namespace)
    vllm_pod = chart.pods(cluster, namespace, RELEASE)[0]["metadata"]["name"]

    alertmanager_pod = cluster.get_json("pod", f"alertmanager-{NAME}-0", "-n", namespace)
    alertmanager_config = gunzipped(cluster, namespace, f"alertmanager-{NAME}-generated", "alertmanager.yaml.gz")

    with fake_vllm(latency=True, load_effect=True) as engine:
        alertmanager = start_alertmanager(work, alertmanager_config, components)
        metrics_port = free_port()
        prom_port = free_port()
        # Container port -> where the process that plays that container listens here.
        local_ports = {
            ports["metrics"]: metrics_port,
            ports["vllm-http"]: _port(engine.url),
            _container_ports(alertmanager_pod)["web"]: _port(alertmanager.url),
        }
        operator_text = reloader_substituted(
            gunzipped(cluster, namespace, f"prometheus-{NAME}", "prometheus.yaml.gz"),
            {"POD_NAME": PROMETHEUS_POD, "SHARD": "0"},
        )
        operator_config = yaml.safe_load(operator_text)
        running = with_local_addresses(operator_config, local_ports)
        prometheus = start_prometheus(work, running, cluster, components, port=prom_port)
        flags = (
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--deployment", name, "--namespace", namespace, "--container", "vllm",
            "--window", "5", "--trip-windows", "1", "--warmup-windows", "0", "--cooldown", "0",
            "--scrape-interval", "1", "--min-draft-tokens", "100",
            "--baseline-p99-p50", "ttft=2.5,tpot=1.4,e2e=2.0",
            "--prometheus-url", prometheus.url,
        )  # fmt: skip
        env = {"KUBECONFIG": str(kubeconfig), "POD_NAME": vllm_pod}
        health = f"http://127.0.0.1:{metrics_port}"
        with run_sidecar(work, "--vllm-url", engine.url, *flags, env=env, health_url=health) as sidecar:
            stack = Stack(
                cluster, namespace, prometheus.url, alertmanager.url, operator_config, running, local_ports, hook,
                sidecar, engine, time.time(), components,
            )  # fmt: skip
            wait_until("Prometheus ready", lambda: _ready(prometheus.url), components, 60)
            wait_until("Alertmanager ready", lambda: _ready(alertmanager.url), components, 60)
            # Prometheus has the sidecar's series from before any toggle, as it would after days of running.
            wait_for(lambda: bool(stack.query('up{job="spec-sidecar"} == 1')), 60, stack.logs)
            # Someone narrows the Role: the sidecar's first patch is refused (403), which it counts and retries
            # with backoff, and Prometheus has specdecode_actuator_errors_total. Put back, the retry goes through.
            verbs = _deployment_verbs(cluster, namespace, name, ["get"])
            stop = threading.Event()
            sender = threading.Thread(target=_traffic, args=(sidecar, stop), daemon=True)
            sender.start()
            load = threading.Thread(target=_load, args=(engine, stop), daemon=True)
            load.start()
            try:
                forbidden = 'specdecode_actuator_errors_total{reason="forbidden"} > 0'
                wait_for(lambda: bool(stack.query(forbidden)), 120, stack.logs)
                # While the patch is refused speculation stays on: the fleet's windows with it on pile up, which
                # the measured speedup compares with those after the disable (it needs two of each).
                # ... in both load bands the engine alternates between, so the load schedule has a cut to propose.
                wait_for(lambda: _band_windows(health, "on") >= MIN_PER_BAND, 180, stack.logs)
                _deployment_verbs(cluster, namespace, name, verbs)
                wait_for(lambda: "--speculative-config" not in _vllm_args(cluster, namespace, name), 180, stack.logs)
                engine.speculation = False  # the new pods' engine runs without the draft model
                chart.rollout(cluster, namespace, name)
                yield stack
            finally:
                stop.set()
                sender.join(30)
                load.join(30)


# The batch sizes the engine alternates between, and how long each lasts: longer than two windows (5 s), so each
# phase holds whole windows of one load. Speculation pays at the first and hurts at the second (load_effect).
LOADS = (1.0, 8.0)
LOAD_PHASE = 12.0


def _load(engine: FakeVllm, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        engine.running = LOADS[i % len(LOADS)]
        i += 1
        stop.wait(LOAD_PHASE)


def _band_windows(sidecar_api: str, state: str) -> int:
    """The fewest windows with speculation ``state`` in the two load bands the engine alternates between."""
    report = httpx.get(f"{sidecar_api}/api/report", timeout=5).json()
    schedule = next((m.get("load_schedule") for m in report.get("models", []) if m["model_name"] == MODEL), None)
    bands = {b["band"]: b for b in (schedule or {}).get("bands", [])}
    return min(int(bands.get(band, {}).get(f"{state}_windows", 0)) for band in ("1", "5-8"))


def _deployment_verbs(cluster: Cluster, namespace: str, name: str, verbs: list[str]) -> list[str]:
    """Sets what the chart's Role allows on its Deployment; returns what it allowed before."""
    role = cluster.get_json("role", name, "-n", namespace)
    index = next(i for i, rule in enumerate(role["rules"]) if "deployments" in rule["resources"])
    patch = [{"op": "replace", "path": f"/rules/{index}/verbs", "value": verbs}]
    cluster.kubectl("patch", "role", name, "-n", namespace, "--type", "json", "-p", json.dumps(patch))
    before: list[str] = role["rules"][index]["verbs"]
    return before


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the tests -------------------------------------------------------------------------------------------------


def test_the_binaries_report_their_real_versions(monitoring_stack: Stack) -> None:
    stack = monitoring_stack
    bins = monitoring_binaries()
    info = httpx.get(f"{stack.prometheus}/api/v1/status/buildinfo", timeout=5).json()["data"]
    assert info["version"] == "3.16.0"
    status = httpx.get(f"{stack.alertmanager}/api/v2/status", timeout=5).json()
    assert status["versionInfo"]["version"] == "0.35.0"
    out = subprocess.run([bins["prometheus-operator"], "--version"], capture_output=True, text=True, check=False)
    assert "0.93.0" in out.stdout + out.stderr


def test_prometheus_runs_the_operators_config_with_only_the_sidecars_address_changed(monitoring_stack: Stack) -> None:
    stack = monitoring_stack
    jobs = {job["job_name"] for job in stack.operator_config["scrape_configs"]}
    name = chart.fullname(RELEASE)
    # The chart's ServiceMonitor has two endpoints (the sidecar's metrics, vLLM's): one job each.
    assert jobs == {f"serviceMonitor/{stack.namespace}/{name}/0", f"serviceMonitor/{stack.namespace}/{name}/1"}
    assert without_local_addresses(stack.running_config, stack.local_ports) == stack.operator_config
    assert stack.running_config != stack.operator_config
    loaded = httpx.get(f"{stack.prometheus}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
    assert yaml.safe_load(loaded)["rule_files"] == stack.operator_config["rule_files"]


def test_prometheus_scrapes_the_sidecar_and_the_engine_with_the_operators_labels(monitoring_stack: Stack) -> None:
    stack = monitoring_stack

    def targets() -> list[dict[str, Any]]:
        data = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]
        return [t for t in data["activeTargets"] if t["health"] == "up"]

    pods = {p["metadata"]["name"] for p in chart.pods(stack.cluster, stack.namespace, RELEASE)}

    def current() -> bool:
        # After the rollout, service discovery drops the old pod's targets within seconds (EndpointSlice update,
        # then Prometheus' target refresh, every 5 s).
        found = targets()
        return {t["labels"]["job"] for t in found} == {"spec-sidecar", "vllm"} and all(
            t["labels"]["pod"] in pods for t in found
        )

    wait_for(current, 60, stack.logs)
    for target in targets():
        labels = target["labels"]
        assert labels["namespace"] == stack.namespace
        assert labels["pod"] in pods
        assert labels["service"] == chart.fullname(RELEASE)
        assert labels["endpoint"] in {"metrics", "vllm"}
        assert target["scrapeUrl"].startswith("http://127.0.0.1:")
    assert httpx.get(f"{stack.prometheus}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]


def test_every_specdecode_family_reaches_prometheus(monitoring_stack: Stack) -> None:
    stack = monitoring_stack

    def names() -> set[str]:
        selector = f'{{job="spec-sidecar",namespace="{stack.namespace}"}}'
        params: dict[str, str | float] = {"match[]": selector, "start": stack.started}
        found = httpx.get(f"{stack.prometheus}/api/v1/label/__name__/values", params=params, timeout=10).json()
        return set(found["data"])

    def families(found: set[str]) -> set[str]:
        out = set()
        for family, kind in exported_families().items():
            samples = {family + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {family}
            if samples <= found:
                out.add(family)
        return out

    wanted = set(exported_families())
    # The measured speedup's families need two windows off in the fleet's numbers after the rollout, each a
    # whole window (5 s) after the state change and the rollout: about 20 s after the fixture is done. The load
    # schedule's need two in each of the two load bands: two load phases more.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: wanted <= families(names()), 180)
    assert wanted - families(names()) == set()


def _dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every annotation, nested panels included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend((panel.get("title", ""), t["expr"]) for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    out.extend((f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if a.get("expr"))
    return out


def _label_values(stack: Stack, query: str, variables: dict[str, str]) -> list[str]:
    """Grafana's label_values(selector, label) variable query, through the series API."""
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", _substitute(query, variables))
    assert match, query
    params: dict[str, str | float] = {"match[]": match.group(1), "start": stack.started}
    series = httpx.get(f"{stack.prometheus}/api/v1/series", params=params, timeout=10).json()["data"]
    return sorted({s[match.group(2)] for s in series if match.group(2) in s})


def _substitute(expr: str, variables: dict[str, str]) -> str:
    for key, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${key}", value)
    return expr


def test_every_dashboard_query_returns_data(monitoring_stack: Stack) -> None:
    stack = monitoring_stack
    dashboard = json.loads((DASHBOARDS / "spec-sidecar.json").read_text())
    variables = {"__rate_interval": RATE_INTERVAL}
    buckets: list[str] = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        values = _label_values(stack, variable["query"], variables)
        assert values, f"dashboard variable ${variable['name']} has no values"
        # Grafana's "All": a regex of every value (the queries match these variables with =~), each value's regex
        # characters escaped, and the escapes doubled inside PromQL's double-quoted string.
        variables[variable["name"]] = "|".join(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", v) for v in values)
        if variable["name"] == "temperature_bucket":
            buckets = values
    queries: list[tuple[str, str]] = []
    for where, expr in _dashboard_queries(dashboard):
        # The per-temperature heatmap is repeated once per bucket (it matches the variable with =): each repeat
        # must draw.
        repeats = buckets if 'temperature_bucket="$temperature_bucket"' in expr else [None]
        for bucket in repeats:
            query = _substitute(expr, {**variables, "temperature_bucket": bucket} if bucket else variables)
            queries.append((where, query))

    def empty() -> list[str]:
        return [f"{where}: {query}" for where, query in queries if not stack.query_range(query)]

    # A series born a moment ago (the measured speedup's, once the fleet has two windows off) is drawn from the
    # range's next step on (every 2 s).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not empty(), 10)
    assert empty() == []


def _parsed(stack: Stack, expr: str) -> Any:
    """The expression's syntax tree, as Prometheus itself parses it."""
    response = httpx.get(f"{stack.prometheus}/api/v1/parse_query", params={"query": expr}, timeout=5).json()
    assert response["status"] == "success", response
    return response["data"]


def _selectors(tree: Any) -> list[str]:
    """Every vector selector in a syntax tree, written back as PromQL."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "vectorSelector":
                matchers = ",".join(f"{m['name']}{m['type']}{json.dumps(m['value'])}" for m in node["matchers"])
                found.append("{" + matchers + "}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


def test_prometheus_loads_the_charts_prometheusrule_and_every_alert_reads_live_series(monitoring_stack: Stack) -> None:
    stack = monitoring_stack
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    shipped = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    # What the operator made of the chart's PrometheusRule is the project's rule file, alert for alert.
    assert set(loaded) == set(shipped)
    silent = []
    for alert, rule in shipped.items():
        tree = _parsed(stack, loaded[alert]["query"])
        assert tree == _parsed(stack, rule["expr"]), alert
        assert loaded[alert]["labels"] == rule["labels"], alert
        # Each series the alert reads existed during the scenario: no alert is blind for a wrong name or label.
        silent += [f"{alert}: {selector}" for selector in _selectors(tree) if not stack.query_range(selector)]
    assert silent == []


def test_the_auto_disable_alert_reaches_the_alertmanager_webhook(monitoring_stack: Stack) -> None:
    stack = monitoring_stack
    # for: 1m after the new pod's first scrape, then Alertmanager's 1 s group wait.
    wait_for(lambda: bool(stack.webhook.firing("SpecDecodeAutoDisabled")), 150, stack.logs)
    alert = stack.webhook.firing("SpecDecodeAutoDisabled")[0]
    assert alert["labels"]["severity"] == "info"
    assert alert["labels"]["namespace"] == stack.namespace
    assert alert["labels"]["job"] == "spec-sidecar"
    assert alert["labels"]["state"] == "off"
    live = {p["metadata"]["name"] for p in chart.pods(stack.cluster, stack.namespace, RELEASE)}
    assert alert["labels"]["pod"] in live
    assert alert["annotations"]["runbook_url"].endswith("#specdecodeautodisabled")
