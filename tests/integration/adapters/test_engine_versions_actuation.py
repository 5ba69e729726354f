"""The actuators against the vLLM versions they may meet: 0.34's dropped speculative-config keys, and
speculation turned on by a speculators checkpoint given as ``--model`` (no flag to remove).

The Kubernetes actuator runs the real ``kubernetes`` client over HTTP against the test API server; the manifest
actuator rewrites a real file. Facts behind the cases: docs/engines.md, "Versions".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core.actuator import NOT_IN_ARGS, Outcome
from sidecar.core.annotations import ControlRecord
from sidecar.core.policy import Action, PolicyConfig
from tests.kubeapi.manifests import NAME, NAMESPACE, deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api
from tests.support.cli_process import cli
from tests.support.kube_actuators import actuator_on
from tests.support.kube_records import auto_decision
from tests.support.stats_builders import stats

T0 = 1_800_000_000.0
# Written for vLLM 0.33: disable_padded_drafter_batch is a key 0.34 dropped (and refuses to start with).
OLD_CONFIG = json.dumps(
    {"method": "eagle3", "model": "org/llama-eagle3", "num_speculative_tokens": 3, "disable_padded_drafter_batch": True}
)
ARGS = ["--model", "org/llama", "--speculative-config", OLD_CONFIG, "--port", "8000"]
# A speculators-format checkpoint as --model: vLLM reads the verifier and the draft from its config.json.
SPECULATORS_ARGS = ["--model", "org/llama-eagle3-speculators", "--served-model-name", "llama", "--port", "8000"]


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def actuator(server: KubeAPI) -> KubeActuator:
    return actuator_on(server.url)


def with_image(obj: dict[str, Any], image: str) -> dict[str, Any]:
    vllm_container(obj)["image"] = image
    return obj


def upgrade(server: KubeAPI, image: str) -> None:
    """Someone moves the engine to another image while speculation is off (as a GitOps sync or helm would)."""
    with server.lock:
        obj = server.deployments[(NAMESPACE, NAME)]
        vllm_container(obj)["image"] = image
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = server._next_version()
        server.complete_rollout(NAMESPACE, NAME)


# --- keys a newer vLLM rejects -----------------------------------------------------------------------------


def test_enable_refuses_to_put_back_a_config_the_upgraded_vllm_would_not_start_with(server: KubeAPI) -> None:
    server.add_deployment(with_image(deployment(args=ARGS), "vllm/vllm-openai:v0.33.0"))
    act = actuator(server)
    assert act.disable("low_acceptance").changed
    upgrade(server, "vllm/vllm-openai:v0.34.0")
    before = server.deployment(NAMESPACE, NAME)

    for force in (False, True):
        result = act.enable("manual", force=force)
        assert result.outcome is Outcome.NOT_RESTORABLE
        assert "disable_padded_drafter_batch" in result.detail and "vLLM 0.34.0" in result.detail
        assert "would not start" in result.detail
    after = server.deployment(NAMESPACE, NAME)
    assert vllm_container(after)["args"] == vllm_container(before)["args"]
    assert after["metadata"]["annotations"][ann.REMOVED_ARGS] == before["metadata"]["annotations"][ann.REMOVED_ARGS]


def test_on_the_version_it_was_written_for_the_same_config_is_restored_byte_for_byte(server: KubeAPI) -> None:
    server.add_deployment(with_image(deployment(args=ARGS), "vllm/vllm-openai:v0.33.0"))
    act = actuator(server)
    assert act.disable("low_acceptance").changed
    server.complete_rollout(NAMESPACE, NAME)
    assert act.enable("manual").outcome is Outcome.CHANGED
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == ARGS


def test_a_config_without_dropped_keys_is_restored_onto_0_34(server: KubeAPI) -> None:
    args = ["--model", "org/llama", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    server.add_deployment(with_image(deployment(args=args), "vllm/vllm-openai:v0.33.0"))
    act = actuator(server)
    assert act.disable("low_acceptance").changed
    upgrade(server, "vllm/vllm-openai:v0.34.0")
    assert act.enable("manual").outcome is Outcome.CHANGED
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == args


def test_an_image_that_names_no_version_is_not_second_guessed(server: KubeAPI) -> None:
    server.add_deployment(with_image(deployment(args=ARGS), "vllm/vllm-openai:v0.33.0"))
    act = actuator(server)
    assert act.disable("low_acceptance").changed
    upgrade(server, "vllm/vllm-openai:latest")
    assert act.enable("manual").outcome is Outcome.CHANGED


def test_the_manifest_actuator_refuses_the_same_restore_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    manifest = deployment(args=ARGS)
    path.write_text(json.dumps(with_image(manifest, "vllm/vllm-openai:v0.33.0"), indent=2))
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    assert act.disable("low_acceptance").changed
    path.write_text(path.read_text().replace("vllm-openai:v0.33.0", "vllm-openai:v0.34.0"))
    off = path.read_text()
    result = act.enable("manual")
    assert result.outcome is Outcome.NOT_RESTORABLE and "disable_padded_drafter_batch" in result.detail
    assert path.read_text() == off


# --- speculation with no flag: a speculators checkpoint as --model ---------------------------------------


def test_an_automatic_disable_with_no_flag_to_remove_is_refused_with_a_warning_event(server: KubeAPI) -> None:
    server.add_deployment(with_image(deployment(args=SPECULATORS_ARGS), "vllm/vllm-openai:v0.34.0"))
    result = actuator(server).disable("low_acceptance", auto_decision(Action.DISABLE, ControlRecord()))
    assert result.outcome is Outcome.NOT_REMOVABLE
    assert result.detail == NOT_IN_ARGS and "speculators" in result.detail and "--model" in result.detail
    assert server.applied_patches() == []
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == SPECULATORS_ARGS
    [event] = server.events
    assert (event["reason"], event["type"]) == ("SpeculationNotRemovable", "Warning")
    assert "speculators" in event["message"] and event["involvedObject"]["name"] == NAME


def test_a_human_disable_with_no_flag_says_what_may_be_going_on(server: KubeAPI) -> None:
    server.add_deployment(deployment(args=SPECULATORS_ARGS))
    result = actuator(server).disable("manual")
    assert result.outcome is Outcome.UNCHANGED
    assert "no speculation flag" in result.detail and "speculators checkpoint as --model" in result.detail
    assert server.applied_patches() == [] and server.events == []


def test_the_control_loop_judges_a_speculators_model_and_each_disable_it_asks_for_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(json.dumps(with_image(deployment(args=SPECULATORS_ARGS), "vllm/vllm-openai:v0.34.0"), indent=2))
    written = path.read_text()
    act = ManifestActuator(path, container="vllm", clock=lambda: T0)
    config = PolicyConfig(trip_windows=2, cooldown=0.0, manual_grace=0.0, min_draft_tokens=100.0)
    controller = Controller(act, config, read_every=0.0)
    for i in range(4):
        controller.step(stats(0.2), T0 + 61 * i)
    # judged from the second window on (trip_windows=2), refused each time, nothing written
    outcomes = [(d.action, d.outcome) for d in controller.decisions]
    assert outcomes == [("disable", "not_removable")] * 3
    assert controller.state is not None and controller.state.speculation is False
    assert controller.decision_state() == "off"  # what the args say; the refusals say why in /status
    assert path.read_text() == written


# --- what a person sees: the installed command ------------------------------------------------------------


def test_the_cli_names_the_rejected_key_and_the_missing_flag_and_exits_1(tmp_path: Path) -> None:
    upgraded = tmp_path / "upgraded.yaml"
    upgraded.write_text(json.dumps(with_image(deployment(args=ARGS), "vllm/vllm-openai:v0.33.0")))
    assert cli("disable", "--deployment-file", str(upgraded), home=tmp_path).returncode == 0
    upgraded.write_text(upgraded.read_text().replace("v0.33.0", "v0.34.0"))
    refused = cli("enable", "--deployment-file", str(upgraded), home=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.startswith("not_restorable: ") and "disable_padded_drafter_batch" in refused.stdout

    speculators = tmp_path / "speculators.yaml"
    speculators.write_text(json.dumps(deployment(args=SPECULATORS_ARGS)))
    answered = cli("disable", "--deployment-file", str(speculators), home=tmp_path)
    assert answered.returncode == 0 and answered.stdout.startswith("unchanged: no speculation flag")
    assert "speculators checkpoint as --model" in answered.stdout
