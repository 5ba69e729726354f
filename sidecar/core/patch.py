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


# The real kube-apiserver applies a JSON Patch to the object as Go's encoder writes it: ``&``, ``<``, ``>`` escaped
# (``\u0026``...), non-ASCII characters raw, some control characters in escapes of its own. Its ``test`` op
# compares those bytes, and Python's encoder (the Kubernetes client's) writes all of them the other way, so a
# ``test`` on such a string fails (422) although it holds exactly what was read: every toggle of an
# ``sh -c '... && ...'`` container or of a non-ASCII argument would read as a conflict forever (Kubernetes'
# apiserver issue 100; shown on the real server in tests/cluster). Such fields are guarded by the resourceVersion
# test alone, which changes with any write to the object.
def _go_encodes_differently(text: str) -> bool:
    return any(c in "&<>" or not 0x20 <= ord(c) < 0x7F for c in text)


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
        if field in current and not any(_go_encodes_differently(str(item)) for item in current[field]):
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
