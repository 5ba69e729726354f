"""The chart's Deployment is one the sidecar can toggle: its real manifest actuator (the same contract as the
Kubernetes one) turns speculation off in the rendered manifest, the result is still a valid Deployment that vLLM
can start (no speculation-only flag left behind), and turning it back on restores the chart's args exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sidecar.adapters.manifest import ManifestActuator
from sidecar.core import specargs
from tests.deploy.tooling import CHART, Manifest, container, documents, one, render, run, tools

PRODUCTION = ("-f", str(CHART / "values-production-example.yaml"))


def _deployment_file(tmp_path: Path, *args: str) -> tuple[Path, Manifest]:
    deployment = one(documents(render(*args)), "Deployment")
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(deployment, sort_keys=False))
    return path, deployment


def _args(path: Path) -> list[str]:
    return list(container(yaml.safe_load(path.read_text()), "vllm")["args"])


@pytest.mark.parametrize("values", [(), PRODUCTION], ids=["defaults", "production"])
def test_the_actuator_turns_speculation_off_and_back_on_in_the_charts_deployment(
    values: tuple[str, ...], tmp_path: Path
) -> None:
    path, rendered = _deployment_file(tmp_path, *values)
    original = container(rendered, "vllm")["args"]
    assert specargs.speculation_configured(None, original)
    actuator = ManifestActuator(path, container="vllm", deployment=rendered["metadata"]["name"])

    off = actuator.disable("test: acceptance below threshold")
    assert str(off.outcome) == "changed", off.detail
    args = _args(path)
    assert not specargs.speculation_configured(None, args)
    assert not any(a.startswith(("--speculative-config", "--per-request-spec-decode-metrics")) for a in args)
    # The chart writes the flag, its JSON and --per-request-spec-decode-metrics=... next to each other.
    flag = original.index("--speculative-config")
    assert original[flag + 2].startswith("--per-request-spec-decode-metrics=")
    assert args == original[:flag] + original[flag + 3 :]
    # The file must still be what kubectl accepts (YAML 1.1: an unquoted off/on would be a boolean).
    result = run([tools()["kubernetes-validate"], "--strict", path], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # `patch --local` with an empty patch decodes the file as the API server would, with no cluster.
    decoded = run(["kubectl", "patch", "--local", "-f", path, "--type=json", "-p", "[]", "-o", "json"], check=False)
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout)["metadata"]["annotations"]["spec-sidecar.io/state"] == "off"

    on = actuator.enable("test: back on")
    assert str(on.outcome) == "changed", on.detail
    assert _args(path) == original
    config = json.loads(_args(path)[_args(path).index("--speculative-config") + 1])
    assert config == json.loads(original[original.index("--speculative-config") + 1])
