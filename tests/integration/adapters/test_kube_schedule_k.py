"""schedule-k on a Deployment through the real ``kubernetes`` client: the guarded patch, the record, the Event, the
refusals (data parallelism, a vLLM without the key), and ``enable`` giving back the original args byte for byte in
every spelling. Runs on the test API server and, through tests/cluster/test_adapter_tests_on_cluster.py,
unchanged on the real kube-apiserver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import api_client
from sidecar.core import annotations as ann
from sidecar.core import rollout_watch, schedule_config
from sidecar.core.actuator import Outcome
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.policy import Action, Decision, PolicyState, Reason
from tests.integration.adapters.test_kube_actuator import actuator, stored
from tests.integration.adapters.test_kube_reduce_k import named, patches_of_the_deployment
from tests.kubeapi.manifests import NAME, NAMESPACE, deployment, vllm_container
from tests.kubeapi.server import JSON_PATCH, KubeAPI, kube_api
from tests.support.kube_actuators import FAST
from tests.support.kube_records import T0
from tests.unit.core.test_spec_tokens import SPELLINGS

SECRET = "sk-live-0123456789"
SCHEDULE = ((1, 4, 5), (5, 256, 0))
VALUE = [list(r) for r in SCHEDULE]
# The engine image: vLLM 0.32 has num_speculative_tokens_per_batch_size (the test manifests' default, 0.11, not).
IMAGE = "vllm/vllm-openai:v0.32.0"
# Spellings a schedule can go into: all but the legacy flags (vLLM before 0.8.3, which has no such key).
SCHEDULABLE = {name: fields for name, fields in SPELLINGS.items() if not name.startswith("legacy")}


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def engine(
    command: list[str] | None = None,
    args: list[str] | None = None,
    *,
    image: str = IMAGE,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    obj = deployment(command=command, args=args, annotations=annotations)
    vllm_container(obj)["image"] = image
    return obj


def schedule_decision(prior: ControlRecord) -> Decision:
    """What the policy hands over for an automatic schedule-k decided on ``prior``."""
    record = prior.toggled(T0, str(Action.SCHEDULE_K), By.SIDECAR, str(Reason.LOAD_SCHEDULE), prior.removed)
    state = PolicyState(speculation=True, rollout_complete=False, record=record)
    return Decision(Action.SCHEDULE_K, Reason.LOAD_SCHEDULE, state, True, "test", prior=prior, schedule=SCHEDULE)


def test_an_automatic_schedule_is_one_guarded_patch_with_its_record_a_watch_and_an_event(server: KubeAPI) -> None:
    command, args = SPELLINGS["JSON value"]
    assert args is not None
    args = [*args, "--api-key", SECRET]
    server.add_deployment(engine(command, args))
    result = actuator(server).schedule_k(None, "load_schedule", schedule_decision(ControlRecord()))
    assert result.outcome is Outcome.CHANGED, result.detail
    [patch] = patches_of_the_deployment(server)
    assert patch.content_type == JSON_PATCH
    assert {"op": "test", "path": "/spec/template/spec/containers/1/args", "value": args} in patch.body
    after = stored(server)
    live = vllm_container(after)["args"]
    assert schedule_config.current_schedule(None, live) == VALUE
    notes = after["metadata"]["annotations"]
    assert notes[ann.STATE] == "on" and notes[ann.CHANGED_BY] == "sidecar"
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["schedule-k"]
    assert SECRET not in json.dumps(notes)
    assert schedule_config.restore(None, live, json.loads(notes[ann.K_SCHEDULE])) == (None, args)
    assert rollout_watch.decode(notes[rollout_watch.WATCH]) is not None  # the rollout of the new config is watched
    [event] = [e for e in server.events if e["reason"] == "SpeculationScheduled"]
    assert "num_speculative_tokens_per_batch_size" in event["message"] and event["type"] == "Normal"


def test_enable_takes_the_schedule_out_byte_for_byte_in_every_spelling(server: KubeAPI) -> None:
    # One Deployment per spelling, in one test: the same test runs on the real server, which takes no parameters.
    for number, (spelling, (command, args)) in enumerate(sorted(SCHEDULABLE.items())):
        name = f"{NAME}-{number}"
        server.add_deployment(named(engine(command, args), name))
        act = KubeActuator(
            api_client(host=server.url), namespace=NAMESPACE, deployment=name, container="vllm", retry=FAST,
            clock=lambda: T0,
        )  # fmt: skip
        written = act.schedule_k(SCHEDULE, "manual")
        assert written.changed, (spelling, written.outcome, written.detail)
        live = vllm_container(server.deployment(NAMESPACE, name))
        assert schedule_config.current_schedule(live.get("command"), live.get("args")) == VALUE, spelling
        server.complete_rollout(NAMESPACE, name)
        restored = act.enable("manual")
        assert restored.changed, (spelling, restored.outcome, restored.detail)
        back = server.deployment(NAMESPACE, name)
        assert (vllm_container(back).get("command"), vllm_container(back).get("args")) == (command, args), spelling
        assert ann.K_SCHEDULE not in (back["metadata"].get("annotations") or {}), spelling


def test_schedule_then_disable_then_enable_gives_back_the_original_config(server: KubeAPI) -> None:
    command, args = SPELLINGS["sh -c with single-quoted JSON"]
    server.add_deployment(engine(command, args))
    act = actuator(server)
    assert act.schedule_k(SCHEDULE, "manual").changed
    server.complete_rollout(NAMESPACE, NAME)
    assert act.disable("manual").changed
    server.complete_rollout(NAMESPACE, NAME)
    assert act.enable("manual").changed
    assert (vllm_container(stored(server)).get("command"), vllm_container(stored(server)).get("args")) == (
        command,
        args,
    )


def test_data_parallelism_is_refused_in_words_and_nothing_is_written(server: KubeAPI) -> None:
    _, args = SPELLINGS["JSON value"]
    assert args is not None
    server.add_deployment(engine(None, [*args, "--data-parallel-size", "2"]))
    result = actuator(server).schedule_k(None, "load_schedule", schedule_decision(ControlRecord()))
    assert result.outcome is Outcome.NOT_SCHEDULABLE
    assert "--data-parallel-size 2" in result.detail and "ignores" in result.detail and "--reduce-k" in result.detail
    assert patches_of_the_deployment(server) == []


def test_a_vllm_without_the_key_is_refused_in_words_and_nothing_is_written(server: KubeAPI) -> None:
    _, args = SPELLINGS["JSON value"]
    server.add_deployment(engine(None, args, image="vllm/vllm-openai:v0.31.0"))
    result = actuator(server).schedule_k(SCHEDULE, "manual")
    assert result.outcome is Outcome.NOT_SCHEDULABLE
    assert "vLLM 0.31.0" in result.detail and "Upgrade the engine" in result.detail
    assert patches_of_the_deployment(server) == []


def test_the_guards_of_a_disable_hold_for_schedule_k(server: KubeAPI) -> None:
    _, args = SPELLINGS["--spec-tokens"]
    server.add_deployment(engine(None, args, annotations={ann.LATCHED: "4 toggles"}))
    act = actuator(server)
    latched = ControlRecord(latched="4 toggles")
    assert act.schedule_k(None, "load_schedule", schedule_decision(latched)).outcome is Outcome.LATCHED
    assert act.schedule_k(None, "load_schedule", schedule_decision(ControlRecord())).outcome is Outcome.CONFLICT
    dry = replace(schedule_decision(latched), write=False)
    assert act.schedule_k(None, "load_schedule", dry).outcome is Outcome.DRY_RUN
    assert patches_of_the_deployment(server) == []
    assert vllm_container(stored(server))["args"] == args


def test_a_schedule_is_written_once_until_a_human_takes_it_out(server: KubeAPI) -> None:
    _, args = SPELLINGS["dotted keys"]
    server.add_deployment(engine(None, args))
    act = actuator(server)
    assert act.schedule_k(SCHEDULE, "manual").changed
    server.complete_rollout(NAMESPACE, NAME)
    again = act.schedule_k(((1, 8, 5), (9, 256, 0)), "manual")
    assert again.outcome is Outcome.NOT_SCHEDULABLE and "enable" in again.detail
    lowered = act.reduce_k(2, "manual")
    assert lowered.outcome is Outcome.NOT_REWRITABLE and "enable" in lowered.detail
