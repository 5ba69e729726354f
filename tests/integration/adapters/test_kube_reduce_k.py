"""reduce-k on a Deployment through the real ``kubernetes`` client: the guarded patch, the record, the Event, and
``enable`` giving back the original args byte for byte in every spelling. Runs on the test API server and, through
tests/cluster/test_adapter_tests_on_cluster.py, unchanged on the real kube-apiserver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import api_client
from sidecar.core import annotations as ann
from sidecar.core import spec_tokens
from sidecar.core.actuator import Outcome
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.policy import Action, Decision, PolicyState, Reason
from tests.integration.adapters.test_kube_actuator import actuator, stored
from tests.kubeapi.manifests import NAME, NAMESPACE, deployment, vllm_container
from tests.kubeapi.server import JSON_PATCH, KubeAPI, kube_api
from tests.support.kube_actuators import FAST
from tests.support.kube_records import T0
from tests.unit.core.test_spec_tokens import SPELLINGS

SECRET = "sk-live-0123456789"


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def reduce_decision(prior: ControlRecord, k: int) -> Decision:
    """What the policy hands over for an automatic reduce-k decided on ``prior``."""
    record = prior.toggled(T0, str(Action.REDUCE_K), By.SIDECAR, str(Reason.LOW_ACCEPTANCE), prior.removed)
    state = PolicyState(speculation=True, rollout_complete=False, record=record)
    return Decision(Action.REDUCE_K, Reason.LOW_ACCEPTANCE, state, True, "test", prior=prior, k=k)


def with_secret(command: list[str] | None, args: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    if args is None:
        return command, args
    return command, [*args, "--api-key", SECRET]


def test_an_automatic_reduce_k_is_one_guarded_patch_with_its_record_and_an_event(server: KubeAPI) -> None:
    command, args = with_secret(*SPELLINGS["JSON value"])
    server.add_deployment(deployment(command=command, args=args))
    result = actuator(server).reduce_k(None, "low_acceptance", reduce_decision(ControlRecord(), 2))
    assert result.outcome is Outcome.CHANGED, result.detail
    [patch] = server.applied_patches()
    assert patch.content_type == JSON_PATCH
    assert {"op": "test", "path": "/spec/template/spec/containers/1/args", "value": args} in patch.body
    after = stored(server)
    live = vllm_container(after)["args"]
    assert spec_tokens.current_k(None, live) == 2
    notes = after["metadata"]["annotations"]
    assert notes[ann.STATE] == "on" and notes[ann.CHANGED_BY] == "sidecar"
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["reduce-k"]
    assert SECRET not in json.dumps(notes)
    assert spec_tokens.restore(None, live, json.loads(notes[ann.REDUCED_K])) == (None, args)
    [event] = [e for e in server.events if e["reason"] == "SpeculativeTokensReduced"]
    assert "num_speculative_tokens" in event["message"] and event["type"] == "Normal"


def test_enable_gives_back_the_original_args_byte_for_byte_in_every_spelling(server: KubeAPI) -> None:
    # One Deployment per spelling, in one test: the same test runs on the real server, which takes no parameters.
    for number, (spelling, (command, args)) in enumerate(sorted(SPELLINGS.items())):
        name = f"{NAME}-{number}"
        server.add_deployment(named(deployment(command=command, args=args), name))
        act = KubeActuator(
            api_client(host=server.url), namespace=NAMESPACE, deployment=name, container="vllm", retry=FAST,
            clock=lambda: T0,
        )  # fmt: skip
        lowered_result = act.reduce_k(1, "manual")
        assert lowered_result.changed, (spelling, lowered_result.outcome, lowered_result.detail)
        lowered = vllm_container(server.deployment(NAMESPACE, name))
        assert spec_tokens.current_k(lowered.get("command"), lowered.get("args")) == 1, spelling
        server.complete_rollout(NAMESPACE, name)
        restored = act.enable("manual")
        assert restored.changed, (spelling, restored.outcome, restored.detail)
        back = server.deployment(NAMESPACE, name)
        assert (vllm_container(back).get("command"), vllm_container(back).get("args")) == (command, args), spelling
        assert ann.REDUCED_K not in (back["metadata"].get("annotations") or {}), spelling


def named(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """The test Deployment under another name, with labels of its own (two Deployments must not share pods)."""
    obj["metadata"]["name"] = name
    obj["metadata"]["labels"] = {"app": name}
    obj["spec"]["selector"]["matchLabels"] = {"app": name}
    obj["spec"]["template"]["metadata"]["labels"] = {"app": name}
    return obj


def test_reduce_then_disable_then_enable_gives_back_the_original_k(server: KubeAPI) -> None:
    command, args = SPELLINGS["sh -c with single-quoted JSON"]
    server.add_deployment(deployment(command=command, args=args))
    act = actuator(server)
    assert act.reduce_k(2, "manual").changed
    server.complete_rollout(*_where(stored(server)))
    assert act.disable("manual").changed
    server.complete_rollout(*_where(stored(server)))
    assert act.enable("manual").changed
    assert vllm_container(stored(server))["args"] == args


def test_the_guards_of_a_disable_hold_for_reduce_k(server: KubeAPI) -> None:
    command, args = SPELLINGS["--spec-tokens"]
    server.add_deployment(deployment(command=command, args=args, annotations={ann.LATCHED: "4 toggles"}))
    act = actuator(server)
    latched = ControlRecord(latched="4 toggles")
    assert act.reduce_k(None, "low_acceptance", reduce_decision(latched, 2)).outcome is Outcome.LATCHED
    stale = act.reduce_k(None, "low_acceptance", reduce_decision(ControlRecord(), 2))
    assert stale.outcome is Outcome.CONFLICT
    dry = replace(reduce_decision(latched, 2), write=False)
    assert act.reduce_k(None, "low_acceptance", dry).outcome is Outcome.DRY_RUN
    assert patches_of_the_deployment(server) == []
    assert vllm_container(stored(server))["args"] == args


def test_a_config_without_num_speculative_tokens_is_refused_in_words_and_left_alone(server: KubeAPI) -> None:
    args = ["--model", "m", "--speculative-config", '{"method":"eagle3","model":"d"}']
    server.add_deployment(deployment(args=args))
    result = actuator(server).reduce_k(None, "low_acceptance", reduce_decision(ControlRecord(), 2))
    assert result.outcome is Outcome.NOT_REWRITABLE
    assert "Set it in --speculative-config" in result.detail
    assert patches_of_the_deployment(server) == []


def test_k_is_lowered_once_until_a_human_restores_it(server: KubeAPI) -> None:
    command, args = SPELLINGS["dotted keys"]
    server.add_deployment(deployment(command=command, args=args))
    act = actuator(server)
    assert act.reduce_k(3, "manual").changed
    server.complete_rollout(*_where(stored(server)))
    again = act.reduce_k(1, "manual")
    assert again.outcome is Outcome.NOT_REWRITABLE and "enable" in again.detail


def patches_of_the_deployment(server: KubeAPI) -> list[Any]:
    """PATCHes that landed on the test Deployment (the real server's proxy also sees other clients' writes)."""
    return [p for p in server.applied_patches() if p.path.endswith(f"/deployments/{NAME}")]


def _where(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]
