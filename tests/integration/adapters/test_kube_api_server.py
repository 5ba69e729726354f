"""The test API server's own semantics, checked with the real client: what the adapter tests rely on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sidecar.adapters.kube.client import api_client
from tests.kubeapi.manifests import NAME, NAMESPACE, list_deployment
from tests.kubeapi.server import KubeAPI, kube_api


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def apps(server: KubeAPI) -> client.AppsV1Api:
    return client.AppsV1Api(api_client(host=server.url))


def patch(server: KubeAPI, ops: Any, content_type: str = "application/json-patch+json") -> dict[str, Any]:
    response: Any = apps(server).patch_namespaced_deployment(
        NAME, NAMESPACE, ops, _content_type=content_type, _preload_content=False
    )
    data: dict[str, Any] = json.loads(response.data)
    return data


def test_a_spec_change_bumps_generation_and_resource_version_and_unfinishes_the_rollout(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    after = patch(server, [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert after["metadata"]["generation"] == 2
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["status"]["observedGeneration"] == 1


def test_a_metadata_change_bumps_only_the_resource_version(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    after = patch(server, [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}])
    assert after["metadata"]["generation"] == 1


def test_a_no_op_patch_keeps_the_resource_version(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    after = patch(server, [{"op": "test", "path": "/metadata/name", "value": NAME}])
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_failed_test_op_is_422_and_changes_nothing(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
    ]
    with pytest.raises(ApiException) as failed:
        patch(server, ops)
    assert failed.value.status == 422
    assert server.deployment(NAMESPACE, NAME) == before


@pytest.mark.parametrize("content_type", ["application/strategic-merge-patch+json", "application/merge-patch+json"])
def test_other_patch_types_are_refused_with_415(server: KubeAPI, content_type: str) -> None:
    server.add_deployment(list_deployment())
    with pytest.raises(ApiException) as refused:
        patch(server, {"spec": {"replicas": 3}}, content_type)
    assert refused.value.status == 415


def test_a_put_with_a_stale_resource_version_is_409(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    api = apps(server)
    raw: Any = api.read_namespaced_deployment(NAME, NAMESPACE, _preload_content=False)
    current = json.loads(raw.data)
    patch(server, [{"op": "replace", "path": "/spec/replicas", "value": 3}])  # someone else writes
    current["spec"]["replicas"] = 4
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_deployment(NAME, NAMESPACE, current, _preload_content=False)
    assert stale.value.status == 409
    assert server.deployment(NAMESPACE, NAME)["spec"]["replicas"] == 3


def test_injected_faults_fire_the_given_number_of_times(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("GET", "/deployments/", 503, times=1)
    api = apps(server)
    with pytest.raises(ApiException) as first:
        api.read_namespaced_deployment(NAME, NAMESPACE, _preload_content=False)
    assert first.value.status == 503
    again: Any = api.read_namespaced_deployment(NAME, NAMESPACE, _preload_content=False)
    assert again.status == 200
