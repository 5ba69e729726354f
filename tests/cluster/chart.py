"""The chart on the real cluster: helm against its API server, rollouts, and what a release leaves behind."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.cluster import NODE_NAMES, Cluster
from tests.deploy.tooling import CHART, tools

# Kinds whose objects the cluster makes about a release, not for it: they expire on their own (events, 1 h),
# or belong to every namespace (the CA bundle, the default ServiceAccount).
BOOKKEEPING = {"events", "events.events.k8s.io"}
NAMESPACE_DEFAULTS = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
_namespaces = itertools.count()


def helm(cluster: Cluster, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(tools()["helm"]), "--kubeconfig", str(cluster.kubeconfig), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def new_namespace(cluster: Cluster, prefix: str) -> str:
    """A namespace of its own per test: releases never meet, and a failed test leaves nothing for the next."""
    name = f"{prefix}-{next(_namespaces)}"
    cluster.kubectl("create", "namespace", name)
    return name


def values_file(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def install(cluster: Cluster, release: str, namespace: str, *value_args: str | Path) -> None:
    # --wait: helm returns only once the Deployment's pods are Ready (kwok makes them so), or fails after 3 min.
    helm(cluster, "install", release, CHART, "--namespace", namespace, "--wait", "--timeout", "180s", *value_args)


def fullname(release: str) -> str:
    """The chart's name for every object of a release (spec-sidecar.fullname in _helpers.tpl)."""
    return release if "spec-sidecar" in release else f"{release}-spec-sidecar"


def pods(cluster: Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release}"
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return items


def ready_on_fake_nodes(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return (
        pod["status"].get("phase") == "Running"
        and conditions.get("Ready") == "True"
        and pod["spec"].get("nodeName") in NODE_NAMES
        and "deletionTimestamp" not in pod["metadata"]
    )


def rollout(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout", "120s")


def vllm_args(pod_or_template: dict[str, Any]) -> list[str]:
    spec = pod_or_template["spec"]
    spec = spec["template"]["spec"] if "template" in spec else spec
    return list(next(c for c in spec["containers"] if c["name"] == "vllm")["args"])


def namespaced_kinds(cluster: Cluster) -> list[str]:
    out = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout
    return sorted(set(out.split()) - BOOKKEEPING)


def leftovers(cluster: Cluster, namespace: str) -> list[str]:
    """Every object in the namespace, of every listable kind (CRDs' too), but bookkeeping and per-namespace defaults."""
    found = cluster.get_json(",".join(namespaced_kinds(cluster)), "-n", namespace)["items"]
    named = {(o["kind"], o["metadata"]["name"]) for o in found}
    return sorted(f"{kind}/{name}" for kind, name in named - NAMESPACE_DEFAULTS)


def cluster_scoped_with_label(cluster: Cluster, release: str) -> list[str]:
    out = cluster.kubectl("api-resources", "--verbs=list", "--namespaced=false", "-o", "name").stdout
    found = cluster.get_json(",".join(out.split()), "-l", f"app.kubernetes.io/instance={release}")["items"]
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in found)


def install_crds(cluster: Cluster) -> list[str]:
    """The Prometheus Operator's CRDs from its pinned module; server-side apply (some exceed the annotation limit
    client-side apply writes)."""
    folder = Path(cluster.bin["prometheus_operator_crds"])
    applied = cluster.kubectl(
        "apply", "--server-side", "--field-manager", "spec-sidecar-tests", "-f", str(folder), "-o", "name"
    ).stdout.split()
    names = [line.split("/", 1)[1] for line in applied]
    cluster.kubectl("wait", "--for", "condition=Established", "--timeout", "60s", *(f"crd/{n}" for n in names))
    return names


def manifest(cluster: Cluster, release: str, namespace: str) -> list[dict[str, Any]]:
    text = helm(cluster, "get", "manifest", release, "--namespace", namespace).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
