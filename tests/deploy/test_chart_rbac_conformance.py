"""The chart's Role allows exactly what the sidecar really does: no request is forbidden, no grant is unused.

The sidecar's own actuator (built by its own factory from settings, so with its own Lease naming) runs a full
cycle against the project's test API server holding the chart's rendered Deployment: elect, turn speculation
off, (rollout completes) turn it back on, give the Lease up. Every HTTP request it made is mapped to the RBAC
attributes the API server would authorise (API group, resource, verb, name, namespace) and checked against the
rendered Role, the way the Kubernetes RBAC authoriser matches rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.core.actuator import Outcome
from sidecar.settings import TargetSettings
from sidecar.wiring import build_actuator
from tests.deploy.tooling import Manifest, documents, one, render
from tests.kubeapi.server import KubeAPI, kube_api

NAMESPACE = "inference"
ROUTES = (
    (re.compile(r"^/apis/(?P<group>apps)/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>deployments)(?:/(?P<name>[^/?]+))?")),
    (
        re.compile(
            r"^/apis/(?P<group>coordination\.k8s\.io)/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>leases)"
            r"(?:/(?P<name>[^/?]+))?"
        )
    ),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>events)(?:/(?P<name>[^/?]+))?")),
)
VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}


class Request(NamedTuple):
    group: str
    resource: str
    verb: str
    name: str | None
    namespace: str


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def _attributes(method: str, path: str) -> Request:
    for route in ROUTES:
        if m := route.match(path):
            group = m.groupdict().get("group") or ""
            verb = VERBS[method]
            if method == "GET" and m["name"] is None:
                verb = "list"
            return Request(group, m["resource"], verb, m["name"], m["ns"])
    raise AssertionError(f"the sidecar called an API the test does not know: {method} {path}")


def _allows(rule: Manifest, request: Request) -> bool:
    return (
        request.group in rule["apiGroups"]
        and request.resource in rule["resources"]
        and request.verb in rule["verbs"]
        and (not rule.get("resourceNames") or request.name in rule["resourceNames"])
    )


def _full_cycle(server: KubeAPI, deployment: Manifest) -> KubeActuator:
    server.add_deployment(deployment)
    name = deployment["metadata"]["name"]
    settings = TargetSettings(deployment=name, namespace=NAMESPACE, container="vllm", kube_host=server.url)
    actuator = build_actuator(settings, elect=True)
    assert isinstance(actuator, KubeActuator)
    off = actuator.disable("low acceptance")
    assert off.outcome is Outcome.CHANGED, off.detail
    server.complete_rollout(NAMESPACE, name)
    on = actuator.enable("trial", force=True)
    assert on.outcome is Outcome.CHANGED, on.detail
    assert actuator.elector is not None
    actuator.elector.release()
    return actuator


def test_every_request_of_a_full_toggle_cycle_is_allowed_and_every_grant_is_used(
    server: KubeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "demo-spec-sidecar-abc12")
    docs = documents(render(namespace=NAMESPACE))
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    _full_cycle(server, one(docs, "Deployment"))

    requests = [_attributes(r.method, r.path) for r in server.requests]
    assert {r.verb for r in requests} >= {"get", "patch", "create", "update"}
    forbidden = [r for r in requests if r.namespace != NAMESPACE or not any(_allows(g, r) for g in role["rules"])]
    assert forbidden == [], f"the Role would forbid: {forbidden}"
    unused = [
        (rule["resources"], verb, rule.get("resourceNames"))
        for rule in role["rules"]
        for verb in rule["verbs"]
        if not any(_allows({**rule, "verbs": [verb]}, r) for r in requests)
    ]
    assert unused == [], f"the Role grants what the sidecar never does: {unused}"


def test_a_role_for_another_lease_name_would_forbid_the_sidecar(server: KubeAPI) -> None:
    # Shows the check above can fail: rename the Lease in the Role and the sidecar's lease calls are refused.
    docs = documents(render(namespace=NAMESPACE))
    role = one(docs, "Role")
    for rule in role["rules"]:
        if rule["resources"] == ["leases"] and rule.get("resourceNames"):
            rule["resourceNames"] = ["some-other-lease"]
    _full_cycle(server, one(docs, "Deployment"))
    requests = [_attributes(r.method, r.path) for r in server.requests]
    forbidden = {(r.resource, r.verb) for r in requests if not any(_allows(g, r) for g in role["rules"])}
    assert forbidden == {("leases", "get"), ("leases", "update")}
