"""The monitoring stack on the real cluster: the Prometheus Operator, and Prometheus 3 and Alertmanager run with
exactly the configuration the operator generated.

The operator runs as a process on this machine against the cluster's API server (admin client certificate), and
does what it does in any cluster: it turns the Prometheus and Alertmanager custom resources, the chart's
ServiceMonitor and PrometheusRule and an AlertmanagerConfig into a gzipped Prometheus config (Secret
`prometheus-<name>`), rule files (ConfigMaps `prometheus-<name>-rulefiles-<n>`), an Alertmanager config (Secret
`alertmanager-<name>-generated`) and StatefulSets. kwok runs no containers, so the StatefulSets' pods are Ready
on the fake nodes but empty; Prometheus and Alertmanager run here instead, as their pods would:

- The config is the operator's, decompressed and with the `$(POD_NAME)`-style variables filled in, as the
  operator's config reloader does in the pod. Rule files go where the pod mounts them
  (/etc/prometheus/rules/<configmap>/), and Prometheus reaches the API server in-cluster style, with a
  ServiceAccount token at /var/run/secrets/kubernetes.io/serviceaccount/ and KUBERNETES_SERVICE_HOST/PORT.
  Both paths are the operator's assumptions, so Prometheus runs in a private mount namespace (`unshare -m`) in
  which /etc and /run are overlays holding those files; nothing on the machine changes.
- One thing differs: the address. Service discovery finds the pods at their kwok pod IPs (10.244.0.x), where
  nothing listens; the sidecar, the engine and Alertmanager listen on 127.0.0.1. An EndpointSlice cannot say
  127.0.0.1 (the API server refuses loopback addresses), so one relabel rule is appended to each discovered job
  of the operator's config: `<any pod IP>:<container port>` becomes `127.0.0.1:<local port>`. Everything before
  it (the operator's relabelings: job, namespace, pod, service, endpoint, ...) runs unchanged.
"""

from __future__ import annotations

import base64
import copy
import functools
import gzip
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from tests.cluster.cluster import ROOT, Cluster, Component, _start, free_port, installed

INSTALL_SCRIPT = ROOT / "scripts" / "install-monitoring.sh"
# The controllers the cluster does not run but the operator's objects need: StatefulSets (Prometheus' and
# Alertmanager's pods) and EndpointSlices (what Prometheus' service discovery reads).
EXTRA_CONTROLLERS = ("statefulset", "endpointslice")
# What the operator's config reloader substitutes in the pod (its env: POD_NAME from the downward API, SHARD).
RELOADER_VARIABLES = re.compile(r"\$\(([A-Z_]+)\)")
SERVICE_ACCOUNT_DIR = Path("secrets/kubernetes.io/serviceaccount")  # under /run (= /var/run)


@functools.cache
def monitoring_binaries() -> dict[str, str]:
    """Where install-monitoring.sh put the operator, Prometheus and Alertmanager (it builds them the first time)."""
    return installed(INSTALL_SCRIPT)


def start_extra_controllers(cluster: Cluster, work: Path, components: list[Component]) -> None:
    """A second kube-controller-manager with only the controllers the monitoring objects need, so the session's
    cluster (and every other test on it) keeps the controllers it has."""
    port = free_port()
    kubeconfig = str(cluster.kubeconfig)
    _start(
        "kube-controller-manager-monitoring",
        [
            cluster.bin["kube-controller-manager"], "--kubeconfig", kubeconfig,
            "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
            "--bind-address", "127.0.0.1", "--secure-port", str(port), "--cert-dir", str(work / "kcm-monitoring"),
            "--leader-elect=false", "--controllers", ",".join(EXTRA_CONTROLLERS),
        ],
        work,
        components,
    )  # fmt: skip


def start_operator(cluster: Cluster, namespace: str, work: Path, components: list[Component]) -> Component:
    """The operator as a local process with the cluster's admin client certificate (it needs the rights its own
    ClusterRole lists; system:masters has them), watching only the test's namespace."""
    pki = cluster.workdir / "pki"
    bins = monitoring_binaries()
    return _start(
        "prometheus-operator",
        [
            bins["prometheus-operator"], "--apiserver", cluster.server,
            "--cert-file", str(pki / "admin.crt"), "--key-file", str(pki / "admin.key"),
            "--ca-file", str(pki / "ca.crt"),
            "--namespaces", namespace, "--web.listen-address", f"127.0.0.1:{free_port()}",
        ],
        work,
        components,
    )  # fmt: skip


def gunzipped(cluster: Cluster, namespace: str, secret: str, key: str) -> str:
    data = cluster.get_json("secret", secret, "-n", namespace)["data"][key]
    return gzip.decompress(base64.b64decode(data)).decode()


def reloader_substituted(text: str, variables: Mapping[str, str]) -> str:
    """What the config reloader writes for Prometheus to read: `$(NAME)` replaced by the pod's environment."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise AssertionError(f"the operator's config uses $({name}), which the test does not set")
        return variables[name]

    return RELOADER_VARIABLES.sub(value, text)


def address_rule(container_port: int, local_port: int) -> dict[str, Any]:
    """The one rule the test adds: any pod IP at this container port is reached at 127.0.0.1:<local port>."""
    return {
        "source_labels": ["__address__"],
        "regex": rf"[^:]+:{container_port}",
        "target_label": "__address__",
        "replacement": f"127.0.0.1:{local_port}",
        "action": "replace",
    }


def with_local_addresses(config: dict[str, Any], ports: Mapping[int, int]) -> dict[str, Any]:
    """The operator's config with `address_rule`s appended to every Kubernetes-discovered scrape job and
    Alertmanager set; nothing else changes (tests check that removing them gives the operator's config back)."""
    changed = copy.deepcopy(config)
    rules = [address_rule(container, local) for container, local in sorted(ports.items())]
    for job in changed.get("scrape_configs", []):
        if "kubernetes_sd_configs" in job:
            job["relabel_configs"] = [*job.get("relabel_configs", []), *rules]
    for alertmanagers in changed.get("alerting", {}).get("alertmanagers", []):
        if "kubernetes_sd_configs" in alertmanagers:
            alertmanagers["relabel_configs"] = [*alertmanagers.get("relabel_configs", []), *rules]
    return changed


def without_local_addresses(config: dict[str, Any], ports: Mapping[int, int]) -> dict[str, Any]:
    rules = [address_rule(container, local) for container, local in sorted(ports.items())]
    restored = copy.deepcopy(config)
    jobs = [*restored.get("scrape_configs", []), *restored.get("alerting", {}).get("alertmanagers", [])]
    for job in jobs:
        if "relabel_configs" in job and job["relabel_configs"][-len(rules) :] == rules:
            job["relabel_configs"] = job["relabel_configs"][: -len(rules)]
    return restored


def _overlay_dirs(work: Path) -> dict[str, Path]:
    """The upper layers of the overlays Prometheus sees: files added to /etc and to /run (= /var/run)."""
    return {"/etc": work / "etc-upper", "/run": work / "run-upper"}


def pod_filesystem(
    work: Path, rule_files: Mapping[str, Mapping[str, str]], token: str, ca_cert: Path, namespace: str
) -> None:
    """Lay out what the Prometheus pod would have mounted: rule ConfigMaps under /etc/prometheus/rules/<name>/ and
    the ServiceAccount token, CA and namespace under /var/run/secrets/kubernetes.io/serviceaccount/."""
    layers = _overlay_dirs(work)
    for configmap, files in rule_files.items():
        folder = layers["/etc"] / "prometheus" / "rules" / configmap
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    account = layers["/run"] / SERVICE_ACCOUNT_DIR
    account.mkdir(parents=True, exist_ok=True)
    (account / "token").write_text(token)
    shutil.copy(ca_cert, account / "ca.crt")
    (account / "namespace").write_text(namespace)


def in_pod_namespace(work: Path, argv: list[str]) -> list[str]:
    """argv run in a private mount namespace where /etc and /run are overlays with the pod's files on top.

    `unshare -m` needs root (CAP_SYS_ADMIN); elsewhere `unshare -r -m` makes a user namespace first.
    """
    mounts = []
    for target, upper in _overlay_dirs(work).items():
        upper.mkdir(parents=True, exist_ok=True)
        scratch = work / f"overlay-work{target.replace('/', '-')}"
        scratch.mkdir(exist_ok=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={scratch} {target}")
    script = " && ".join([*mounts, 'exec "$@"'])
    user = [] if os.geteuid() == 0 else ["-r"]
    return ["unshare", *user, "-m", "--propagation", "private", "sh", "-c", script, "in-pod-namespace", *argv]


@dataclass
class LocalServer:
    component: Component
    url: str


def start_prometheus(
    work: Path, config: dict[str, Any], cluster: Cluster, components: list[Component], port: int
) -> LocalServer:
    bins = monitoring_binaries()
    config_file = work / "prometheus.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    api = urlparse(cluster.server)
    argv = in_pod_namespace(
        work,
        [
            bins["prometheus"], f"--config.file={config_file}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )  # fmt: skip
    # In a pod the kubelet sets these; with the token file they are what in-cluster service discovery reads.
    env = [f"KUBERNETES_SERVICE_HOST={api.hostname}", f"KUBERNETES_SERVICE_PORT={api.port}"]
    component = _start("prometheus", ["env", *env, *argv], work, components)
    return LocalServer(component, f"http://127.0.0.1:{port}")


def start_alertmanager(work: Path, config_text: str, components: list[Component]) -> LocalServer:
    bins = monitoring_binaries()
    port = free_port()
    config_file = work / "alertmanager.yaml"
    config_file.write_text(config_text)
    argv = [
        bins["alertmanager"], f"--config.file={config_file}", f"--storage.path={work / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",  # one replica: no gossip port
    ]  # fmt: skip
    return LocalServer(_start("alertmanager", argv, work, components), f"http://127.0.0.1:{port}")
