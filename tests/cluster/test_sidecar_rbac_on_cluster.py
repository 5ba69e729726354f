"""The sidecar with the chart's own ServiceAccount on a real API server: RBAC is the real authorizer.

The token comes from the TokenRequest API (`kubectl create token`), exactly the kind the chart's projected
volume mounts into the sidecar container. `spec-sidecar disable`/`enable` run as processes with it: every
request they make must be allowed, and the Deployment controller must roll the change out on the kwok nodes.
Outside the Role, the same token is refused with 403.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.adapters.kube.client import api_client
from sidecar.adapters.kube.lease import LeaseElector
from sidecar.core import annotations as ann
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.deploy.tooling import CHART

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "llm"


@dataclass(frozen=True)
class Release:
    namespace: str
    name: str  # the Deployment, ServiceAccount, Role: the chart's fullname
    token: str
    kubeconfig: Path


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    namespace = chart.new_namespace(cluster, "rbac")
    chart.install(cluster, RELEASE, namespace)
    name = chart.fullname(RELEASE)
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(token, tmp_path_factory.mktemp("sa") / "kubeconfig", namespace)
    # Things the sidecar must not reach: another Deployment and a Secret in its own namespace.
    other = chart.helm(cluster, "template", "other", CHART, "--namespace", namespace).stdout
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=other)
    cluster.kubectl("create", "secret", "generic", "db-password", "-n", namespace, "--from-literal=password=hunter2")
    yield Release(namespace, name, token, kubeconfig)
    chart.helm(cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)


def sidecar_cli(release: Release, *args: str) -> subprocess.CompletedProcess[str]:
    target = ["--deployment", release.name, "--namespace", release.namespace, "--container", "vllm"]
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", *args, *target, "--kubeconfig", str(release.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def request(cluster: Cluster, token: str, method: str, path: str, body: bytes | None = None) -> int:
    """One raw request with the token; returns the HTTP status (the client libraries would hide a 403 in text)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json-patch+json"
    req = urllib.request.Request(cluster.server + path, data=body, headers=headers, method=method)
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_disable_and_enable_with_the_charts_service_account_token_are_allowed_and_roll_out(
    cluster: Cluster, release: Release
) -> None:
    deployment = cluster.get_json("deployment", release.name, "-n", release.namespace)
    original = chart.vllm_args(deployment)
    assert "--speculative-config" in original

    status = sidecar_cli(release, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["speculation"] == "on"

    off = sidecar_cli(release, "disable", "--reason", "cluster-test", "--json")
    assert off.returncode == 0, off.stdout + off.stderr
    assert json.loads(off.stdout)["outcome"] == "changed"
    assert "could not emit the Event" not in off.stderr, off.stderr
    chart.rollout(cluster, release.namespace, release.name)
    disabled = cluster.get_json("deployment", release.name, "-n", release.namespace)
    assert disabled["metadata"]["generation"] > deployment["metadata"]["generation"]
    assert "--speculative-config" not in chart.vllm_args(disabled)
    assert disabled["metadata"]["annotations"][ann.REASON] == "cluster-test"
    assert disabled["metadata"]["annotations"][ann.CHANGED_BY] == "manual"
    live = [p for p in chart.pods(cluster, release.namespace, RELEASE) if chart.ready_on_fake_nodes(p)]
    assert live and all("--speculative-config" not in chart.vllm_args(p) for p in live)
    events = cluster.get_json(
        "events", "-n", release.namespace, "--field-selector", f"involvedObject.name={release.name}"
    )["items"]
    assert "SpeculationDisabled" in {e["reason"] for e in events}

    on = sidecar_cli(release, "enable", "--json")
    assert on.returncode == 0, on.stdout + on.stderr
    chart.rollout(cluster, release.namespace, release.name)
    restored = cluster.get_json("deployment", release.name, "-n", release.namespace)
    assert chart.vllm_args(restored) == original  # byte for byte, order included
    live = [p for p in chart.pods(cluster, release.namespace, RELEASE) if chart.ready_on_fake_nodes(p)]
    assert live and all(chart.vllm_args(p) == original for p in live)


def test_the_token_reads_its_own_deployment_but_gets_403_for_another_deployment_and_for_secrets(
    cluster: Cluster, release: Release
) -> None:
    ns = release.namespace
    own = f"/apis/apps/v1/namespaces/{ns}/deployments/{release.name}"
    other = f"/apis/apps/v1/namespaces/{ns}/deployments/{chart.fullname('other')}"
    noop = json.dumps([{"op": "test", "path": "/metadata/name", "value": chart.fullname("other")}]).encode()
    assert request(cluster, release.token, "GET", own) == 200
    assert request(cluster, release.token, "GET", other) == 403
    assert request(cluster, release.token, "PATCH", other, noop) == 403
    assert request(cluster, release.token, "GET", f"/api/v1/namespaces/{ns}/secrets/db-password") == 403
    assert request(cluster, release.token, "GET", f"/api/v1/namespaces/{ns}/secrets") == 403
    # Not even its own Deployment can be deleted: the Role grants get and patch only.
    assert request(cluster, release.token, "DELETE", own) == 403


def test_the_lease_is_created_renewed_and_handed_over_with_the_token_and_only_one_holder_at_a_time(
    cluster: Cluster, release: Release
) -> None:
    # The names sidecar/wiring.py uses: <deployment>-spec-sidecar, the pod's name as identity.
    lease = f"{release.name}-spec-sidecar"
    api = api_client(kubeconfig=str(release.kubeconfig))
    first = LeaseElector(api, namespace=release.namespace, name=lease, identity="pod-a", duration=30)
    second = LeaseElector(api, namespace=release.namespace, name=lease, identity="pod-b", duration=30)

    assert first.acquire_or_renew()  # GET 404, then create: allowed without resourceNames
    assert not second.acquire_or_renew() and second.holder == "pod-a"
    held = cluster.get_json("lease", lease, "-n", release.namespace)
    assert held["spec"]["holderIdentity"] == "pod-a"
    assert first.acquire_or_renew()  # update, by resourceNames
    renewed = cluster.get_json("lease", lease, "-n", release.namespace)
    assert int(renewed["metadata"]["resourceVersion"]) > int(held["metadata"]["resourceVersion"])

    first.release()
    assert second.acquire_or_renew()
    assert cluster.get_json("lease", lease, "-n", release.namespace)["spec"]["holderIdentity"] == "pod-b"
    # The only error is the first GET's 404 (no Lease yet): nothing was refused.
    assert first.errors + second.errors == {"not_found": 1}, (first.errors, second.errors)
    # Another Lease is out of reach: RBAC cannot restrict create by name, but the elector reads first, and that GET
    # is outside resourceNames, so it stops at a 403 and creates nothing.
    stray = LeaseElector(api, namespace=release.namespace, name="someone-elses-lease", identity="pod-a", duration=30)
    assert not stray.acquire_or_renew()
    assert stray.errors == {"forbidden": 1}
    assert cluster.kubectl("get", "lease", "someone-elses-lease", "-n", release.namespace, check=False).returncode
