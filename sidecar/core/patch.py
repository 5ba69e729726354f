"""The Deployment JSON Patch and the rollout check, on plain dicts (pure; the Kubernetes actuator sends the patch).

A toggle is ONE JSON Patch (``application/json-patch+json``: args are an atomic list, never strategic merge)
that changes the container's args/command and our annotations together, guarded by ``test`` ops on
``/metadata/resourceVersion`` and on the args/command as read, so a write made on a stale read fails instead of
landing (docs/policy.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sidecar.core.actuator import Plan
from sidecar.core.annotations import ControlRecord, to_annotations


def pointer(*parts: str | int) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# A JSON-patch ``test`` on a list holding "&&" fails on the real kube-apiserver (422 Invalid) although the list is
# exactly what was read; the same patch without that test applies (tests/cluster, an ``sh -c '... && ...'`` script).
# The likely cause: Go stores &, < and > escaped (\u0026 ...) and the test compares strings' raw bytes. Every write
# to such a container would read as a conflict forever, so those fields are guarded by the resourceVersion test
# alone, which changes with any write to the object.
_GO_ESCAPED = frozenset("&<>")


def json_patch(deployment: Mapping[str, Any], index: int, container: str, planned: Plan) -> list[dict[str, Any]]:
    """One patch: tests on what we read, then args/command and annotations. Pure; cross-checked with kubectl."""
    meta = deployment["metadata"]
    base = pointer("spec", "template", "spec", "containers", index)
    current = deployment["spec"]["template"]["spec"]["containers"][index]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "test", "path": base + "/name", "value": container},
    ]
    for field in ("command", "args"):
        if field in current and not any(_GO_ESCAPED.intersection(str(item)) for item in current[field]):
            ops.append({"op": "test", "path": f"{base}/{field}", "value": list(current[field])})
    for field, new in (("command", planned.command), ("args", planned.args)):
        old = current.get(field)
        if (old or []) == (new or []):
            continue
        if new is None:
            ops.append({"op": "remove", "path": f"{base}/{field}"})
        else:
            ops.append({"op": "add" if old is None else "replace", "path": f"{base}/{field}", "value": list(new)})
    ops.extend(annotation_ops(meta.get("annotations"), planned.record))
    return ops


def annotation_ops(existing: Mapping[str, str] | None, record: ControlRecord) -> list[dict[str, Any]]:
    wanted = to_annotations(record)
    if existing is None:
        present = {k: v for k, v in wanted.items() if v is not None}
        return [{"op": "add", "path": "/metadata/annotations", "value": present}] if present else []
    ops: list[dict[str, Any]] = []
    for key, value in wanted.items():
        path = pointer("metadata", "annotations", key)
        if value is None and key in existing:
            ops.append({"op": "remove", "path": path})
        elif value is not None and existing.get(key) != value:
            ops.append({"op": "add", "path": path, "value": value})  # add on a member replaces it
    return ops


def rollout_complete(deployment: Mapping[str, Any], annotation_only: Collection[int] = ()) -> bool:
    """updatedReplicas == readyReplicas == replicas, and the controller has seen the latest generation.

    ``annotation_only``: generations the sidecar made itself by writing annotations alone. The API server bumps
    a Deployment's generation for an annotation change too (the deployment controller copies annotations to the
    ReplicaSet), but no pod rolls for it, so a generation the controller has not seen yet is no rollout when it
    is one of these: the status it describes still holds for the unchanged pod template.
    """
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    replicas = spec.get("replicas", 1)
    observed, generation = status.get("observedGeneration", 0), meta.get("generation", 0)
    if any(unseen not in annotation_only for unseen in range(observed + 1, generation + 1)):
        return False
    return bool(status.get("updatedReplicas", 0) == status.get("readyReplicas", 0) == replicas)
