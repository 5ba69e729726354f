"""What the adapter tests rely on the test API server (tests/kubeapi/) for, checked on the real kube-apiserver
with the same client calls as tests/integration/adapters/test_kube_api_server.py. Where the two differ, the test says so
and docs/testing.md lists it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sidecar.adapters.kube.client import api_client
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.kubeapi.manifests import NAME, list_deployment

JSON_PATCH = "application/json-patch+json"


def apps(cluster: Cluster) -> client.AppsV1Api:
    return client.AppsV1Api(api_client(kubeconfig=str(cluster.kubeconfig)))


def add_deployment(cluster: Cluster, prefix: str) -> tuple[str, dict[str, Any]]:
    """The adapter tests' Deployment in a namespace of its own, once its first rollout is complete."""
    namespace = chart.new_namespace(cluster, prefix)
    deployment = list_deployment()
    deployment["metadata"]["namespace"] = namespace
    cluster.apply(deployment)
    chart.rollout(cluster, namespace, NAME)
    stored: dict[str, Any] = cluster.get_json("deployment", NAME, "-n", namespace)
    return namespace, stored


def patch(cluster: Cluster, namespace: str, ops: Any, content_type: str = JSON_PATCH) -> dict[str, Any]:
    response: Any = apps(cluster).patch_namespaced_deployment(
        NAME, namespace, ops, _content_type=content_type, _preload_content=False
    )
    data: dict[str, Any] = json.loads(response.data)
    return data


def test_a_spec_change_bumps_generation_and_resource_version_and_unfinishes_the_rollout(cluster: Cluster) -> None:
    namespace, before = add_deployment(cluster, "semantics-spec")
    assert before["metadata"]["generation"] == before["status"]["observedGeneration"] == 1
    after = patch(cluster, namespace, [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert after["metadata"]["generation"] == 2
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["status"]["observedGeneration"] == 1  # the controller has not seen it yet: not complete
    chart.rollout(cluster, namespace, NAME)
    assert cluster.get_json("deployment", NAME, "-n", namespace)["status"]["readyReplicas"] == 3


def test_an_annotation_change_bumps_the_generation_on_the_real_server_and_is_copied_to_the_replicaset(
    cluster: Cluster,
) -> None:
    # A difference: the test server bumps only the resourceVersion. The real one also bumps the generation when a
    # Deployment's annotations change ("because annotations are copied from deployments to their replica sets",
    # pkg/registry/apps/deployment/strategy.go), so after the sidecar's annotation-only writes the rollout reads as
    # unfinished until the controller has observed them. No pod is rolled: the template is unchanged.
    namespace, before = add_deployment(cluster, "semantics-meta")
    selector = "app=" + NAME
    replicasets = {rs["metadata"]["name"] for rs in cluster.get_json("rs", "-n", namespace, "-l", selector)["items"]}
    after = patch(cluster, namespace, [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}])
    assert after["metadata"]["generation"] == 2
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    chart.rollout(cluster, namespace, NAME)
    observed = cluster.get_json("deployment", NAME, "-n", namespace)
    assert observed["status"]["observedGeneration"] == 2
    current = cluster.get_json("rs", "-n", namespace, "-l", selector)["items"]
    assert {rs["metadata"]["name"] for rs in current} == replicasets
    assert current[0]["metadata"]["annotations"]["a"] == "b"


def test_a_no_op_patch_keeps_the_resource_version(cluster: Cluster) -> None:
    namespace, before = add_deployment(cluster, "semantics-noop")
    after = patch(cluster, namespace, [{"op": "test", "path": "/metadata/name", "value": NAME}])
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_failed_test_op_is_422_and_changes_nothing(cluster: Cluster) -> None:
    namespace, before = add_deployment(cluster, "semantics-test-op")
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
    ]
    with pytest.raises(ApiException) as failed:
        patch(cluster, namespace, ops)
    assert failed.value.status == 422, failed.value.body
    after = cluster.get_json("deployment", NAME, "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["replicas"] == 2


@pytest.mark.parametrize("content_type", ["application/strategic-merge-patch+json", "application/merge-patch+json"])
def test_the_real_server_accepts_the_merge_patch_types_the_test_server_refuses_with_415(
    cluster: Cluster, content_type: str
) -> None:
    # A difference, and a harmless one: the test server knows JSON Patch only (all the adapter sends) and answers
    # 415 to the rest; the real one applies both merge patches.
    namespace, _ = add_deployment(cluster, "semantics-merge")
    after = patch(cluster, namespace, {"spec": {"replicas": 3}}, content_type)
    assert after["spec"]["replicas"] == 3


def test_a_put_with_a_stale_resource_version_is_409(cluster: Cluster) -> None:
    namespace, _ = add_deployment(cluster, "semantics-put")
    api = apps(cluster)
    raw: Any = api.read_namespaced_deployment(NAME, namespace, _preload_content=False)
    current = json.loads(raw.data)
    patch(cluster, namespace, [{"op": "replace", "path": "/spec/replicas", "value": 3}])  # someone else writes
    current["spec"]["replicas"] = 4
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_deployment(NAME, namespace, current, _preload_content=False)
    assert stale.value.status == 409
    assert cluster.get_json("deployment", NAME, "-n", namespace)["spec"]["replicas"] == 3
