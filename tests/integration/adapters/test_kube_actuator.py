"""The Kubernetes actuator with the real ``kubernetes`` client over HTTP against the test API server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import KubeError, api_client
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core import specargs
from sidecar.core.actuator import Outcome
from sidecar.core.annotations import ControlRecord
from sidecar.core.patch import rollout_complete
from sidecar.core.policy import Action, Decision, Observation, PolicyState, Reason, decide
from tests.kubeapi.manifests import (
    LIST_ARGS,
    NAME,
    NAMESPACE,
    SHELL_SCRIPT,
    deployment,
    list_deployment,
    shell_deployment,
    vllm_container,
)
from tests.kubeapi.server import JSON_PATCH, KubeAPI, kube_api
from tests.support.kube_actuators import FAST, actuator_on
from tests.support.kube_records import T0, TRIAL_CONFIG, auto_decision, trial_deployment
from tests.support.stats_builders import stats


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def actuator(server: KubeAPI, **kwargs: Any) -> KubeActuator:
    return actuator_on(server.url, **kwargs)


def stored(server: KubeAPI) -> dict[str, Any]:
    return server.deployment(NAMESPACE, NAME)


def test_read_sees_speculation_in_the_named_container_and_a_finished_rollout(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    view = actuator(server).read()
    assert view.speculation and view.rollout_complete
    assert view.args == LIST_ARGS
    assert view.record == ControlRecord()


def test_disable_is_one_guarded_json_patch_that_removes_flags_and_records_them(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    result = actuator(server).disable("low_acceptance")
    assert result.outcome is Outcome.CHANGED
    [patch] = server.applied_patches()
    assert patch.content_type == JSON_PATCH
    tests = [op for op in patch.body if op["op"] == "test"]
    assert {"op": "test", "path": "/metadata/resourceVersion", "value": before["metadata"]["resourceVersion"]} in tests
    assert {"op": "test", "path": "/spec/template/spec/containers/1/args", "value": LIST_ARGS} in tests

    after = stored(server)
    assert vllm_container(after)["args"] == ["--model", "/models/target", "--max-model-len", "1024"]
    assert after["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "--spec-tokens", "3"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    notes = after["metadata"]["annotations"]
    assert (notes[ann.STATE], notes[ann.REASON], notes[ann.CHANGED_BY]) == ("off", "low_acceptance", "manual")
    assert notes[ann.CHANGED_AT] == ann.timestamp(T0)
    removed = json.loads(notes[ann.REMOVED_ARGS])
    assert specargs.restore(None, vllm_container(after)["args"], removed) == (None, LIST_ARGS)
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["disable"]


def test_restore_puts_the_original_args_back_byte_for_byte_after_the_rollout(server: KubeAPI) -> None:
    original = vllm_container(server.add_deployment(shell_deployment()))
    act = actuator(server)
    disabled = act.disable("low_acceptance")
    assert disabled.changed
    assert "speculative" not in vllm_container(stored(server))["args"][0]
    # As written, the new args are not rolled out yet (on the real server, kwok may finish it a moment later).
    assert disabled.view is not None and not disabled.view.rollout_complete
    server.complete_rollout(NAMESPACE, NAME)

    fresh = actuator(server)  # a restarted sidecar: everything it needs is on the Deployment
    result = fresh.enable("manual")
    assert result.outcome is Outcome.CHANGED
    restored = vllm_container(stored(server))
    assert restored["args"] == [SHELL_SCRIPT] and restored["command"] == original["command"]
    notes = stored(server)["metadata"]["annotations"]
    assert notes[ann.STATE] == "on" and ann.REMOVED_ARGS not in notes
    assert [h["action"] for h in json.loads(notes[ann.HISTORY])] == ["disable", "enable"]


def test_toggles_are_idempotent(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    act = actuator(server)
    assert act.disable("x").changed
    assert act.disable("x").outcome is Outcome.UNCHANGED
    assert len(server.applied_patches()) == 1


def test_every_toggle_emits_an_event_on_the_deployment(server: KubeAPI) -> None:
    deployment = server.add_deployment(list_deployment())
    act = actuator(server)
    act.disable("low_acceptance")
    server.complete_rollout(NAMESPACE, NAME)
    act.enable("manual")
    reasons = [e["reason"] for e in server.events]
    assert reasons == ["SpeculationDisabled", "SpeculationEnabled"]
    involved = server.events[0]["involvedObject"]
    assert (involved["kind"], involved["name"], involved["uid"]) == ("Deployment", NAME, deployment["metadata"]["uid"])
    assert "--speculative-config" in server.events[0]["message"]


def test_an_automatic_toggle_waits_for_the_rollout_to_finish(server: KubeAPI) -> None:
    server.add_deployment(list_deployment(), rollout_complete=False)
    result = actuator(server).disable("low_acceptance", auto_decision(Action.DISABLE, ControlRecord()))
    assert result.outcome is Outcome.ROLLOUT_PENDING
    assert server.applied_patches() == []


def test_an_automatic_toggle_decided_on_stale_annotations_is_sent_back_to_the_policy(server: KubeAPI) -> None:
    server.add_deployment(list_deployment(annotations={ann.PIN: "on"}))
    result = actuator(server).disable("low_acceptance", auto_decision(Action.DISABLE, ControlRecord()))
    assert result.outcome is Outcome.CONFLICT
    assert server.applied_patches() == []


def test_a_dry_run_decision_writes_nothing(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    decision = auto_decision(Action.DISABLE, ControlRecord())
    dry = Decision(decision.action, decision.reason, decision.state, False, "dry", prior=decision.prior)
    assert actuator(server).disable("low_acceptance", dry).outcome is Outcome.DRY_RUN
    assert server.applied_patches() == []


def write_behind_the_back(server: KubeAPI) -> None:
    """Another client changes the Deployment (a new label) while our PATCH is in flight."""
    with server.lock:
        obj = server.deployments[(NAMESPACE, NAME)]
        obj["metadata"]["labels"]["touched"] = "yes"
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1000)


def race_a_writer(server: KubeAPI, act: KubeActuator, decision: Decision | None) -> Any:
    server.inject("PATCH", "/deployments/", delay=0.3, times=1)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(act.disable("low_acceptance", decision)))
    worker.start()
    # Write once the actuator has read the object (its patch is then on its way, held 0.3 s by the server): a fixed
    # sleep lost the race on a loaded machine, the write landing before the read.
    deadline = time.monotonic() + 10
    while not any(r.method == "GET" for r in server.requests) and time.monotonic() < deadline:
        time.sleep(0.002)
    write_behind_the_back(server)
    worker.join(5)
    return results[0]


def test_a_concurrent_write_fails_the_test_op_and_an_automatic_decision_is_not_retried(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    result = race_a_writer(server, actuator(server), auto_decision(Action.DISABLE, ControlRecord()))
    assert result.outcome is Outcome.CONFLICT
    assert [r.status for r in server.requests if r.method == "PATCH"] == [422]
    assert vllm_container(stored(server))["args"] == LIST_ARGS


def test_a_manual_toggle_re_reads_after_a_conflict_and_applies_on_the_fresh_object(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    result = race_a_writer(server, actuator(server), None)
    assert result.outcome is Outcome.CHANGED
    assert [r.status for r in server.requests if r.method == "PATCH"] == [422, 200]
    after = stored(server)
    assert after["metadata"]["labels"]["touched"] == "yes"  # the other writer's change survives
    assert "--speculative-config" not in vllm_container(after)["args"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried_with_backoff_and_counted(server: KubeAPI, status: int) -> None:
    server.add_deployment(list_deployment())
    server.inject("PATCH", "/deployments/", status, times=2)
    act = actuator(server)
    assert act.disable("x").changed
    assert len(server.applied_patches()) == 1
    assert sum(act.errors.values()) == 2


def test_retries_give_up_without_a_half_done_change(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    server.inject("PATCH", "/deployments/", 503, times=10)
    act = actuator(server)
    result = act.disable("x")
    assert result.outcome is Outcome.ERROR and "server_error" in result.detail
    assert act.errors["server_error"] == FAST.attempts
    assert stored(server) == server.deployment(NAMESPACE, NAME)
    assert stored(server)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert server.events == []


def test_forbidden_is_not_retried(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("PATCH", "/deployments/", 403, times=5)
    act = actuator(server)
    result = act.disable("x")
    assert result.outcome is Outcome.ERROR and "forbidden" in result.detail
    assert len([r for r in server.requests if r.method == "PATCH"]) == 1
    assert act.errors == {"forbidden": 1}


def test_a_missing_deployment_or_container_is_a_clear_error(server: KubeAPI) -> None:
    with pytest.raises(KubeError) as missing:
        actuator(server).read()
    assert missing.value.reason == "not_found"
    server.add_deployment(list_deployment())
    wrong = KubeActuator(api_client(host=server.url), namespace=NAMESPACE, deployment=NAME, container="nope")
    with pytest.raises(KubeError) as no_container:
        wrong.read()
    assert no_container.value.reason == "container_not_found"


def test_a_slow_answer_times_out_and_is_retried(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("GET", "/deployments/", delay=1.0, times=1)
    act = actuator(server)
    assert act.read().speculation
    assert act.errors["timeout"] == 1


def test_a_lost_response_to_an_applied_patch_is_recognised_as_our_own_write(server: KubeAPI) -> None:
    before = server.add_deployment(list_deployment())
    server.inject("PATCH", "/deployments/", 503, times=1, after_apply=True)
    act = actuator(server)
    act.clock = lambda: T0 + 0.123456  # sub-millisecond time: the record must still match what it reads back
    result = act.disable("x")
    assert result.outcome is Outcome.CHANGED
    assert [r.status for r in server.requests if r.method == "PATCH"] == [503, 422]
    assert stored(server)["metadata"]["generation"] == before["metadata"]["generation"] + 1


def test_another_sidecars_identical_write_is_not_taken_for_our_own(server: KubeAPI) -> None:
    # Two sidecars without a lease decide the same disable at the same millisecond: identical records. Both read
    # before either writes; the second's patch fails its test. It was sent once, so it cannot have landed: the
    # second re-reads, finds speculation already off, and reports no change (no second Event, no toggle counted).
    before = server.add_deployment(list_deployment())
    racers = [actuator(server, identity=name) for name in ("pod-a", "pod-b")]
    both_read = threading.Barrier(2)
    for act in racers:
        act.clock = lambda: T0
        original, first = act._patch, [True]

        def patch(ops: list[dict[str, Any]], original: Any = original, first: list[bool] = first) -> Any:
            if first:  # only before an actuator's first patch
                first.clear()
                both_read.wait(10)
            return original(ops)

        act._patch = patch  # type: ignore[method-assign]
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        results[i] = racers[i].disable("x")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.outcome for r in results) == sorted([Outcome.CHANGED, Outcome.UNCHANGED]), results
    assert stored(server)["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert [e["reason"] for e in server.events] == ["SpeculationDisabled"]


def test_an_event_that_cannot_be_posted_is_counted_and_the_toggle_stands(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    server.inject("POST", "/events$", 403, times=1)
    act = actuator(server)
    assert act.disable("x").changed
    assert act.errors["event_failed"] == 1 and server.events == []


def test_latch_writes_annotations_only(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    act = actuator(server)
    latched = ControlRecord(latched="5 automatic toggles within 21600s")
    result = act.write_record(latched, "latch")
    assert result.changed
    after = stored(server)
    assert vllm_container(after)["args"] == LIST_ARGS
    assert after["metadata"]["annotations"][ann.LATCHED] == latched.latched
    # No rollout: the template is unchanged. The real server still bumps the generation for the annotations.
    assert after["metadata"]["generation"] == 1 + server.annotations_bump_generation
    assert server.events[-1]["reason"] == "SpeculationLatched" and server.events[-1]["type"] == "Warning"


def test_a_human_cannot_enable_against_a_pin_off(server: KubeAPI) -> None:
    server.add_deployment(list_deployment(annotations={ann.PIN: "off"}))
    act = actuator(server)
    assert act.disable("pinned").changed
    server.complete_rollout(NAMESPACE, NAME)
    assert act.enable("manual").outcome is Outcome.PINNED


def test_enable_without_a_removal_record_says_so(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    act = actuator(server)
    act.disable("x")
    server.complete_rollout(NAMESPACE, NAME)
    server.edit(NAMESPACE, NAME, lambda obj: obj["metadata"]["annotations"].pop(ann.REMOVED_ARGS))
    assert act.enable("manual").outcome is Outcome.NOT_RESTORABLE


def test_enable_after_a_hand_edit_is_refused_unless_forced(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    act = actuator(server)
    act.disable("x")
    server.complete_rollout(NAMESPACE, NAME)
    server.edit(NAMESPACE, NAME, lambda obj: vllm_container(obj)["args"].__setitem__(-1, "2048"))
    assert act.enable("manual").outcome is Outcome.NOT_RESTORABLE
    assert act.enable("manual", force=True).changed
    assert vllm_container(stored(server))["args"] == [*LIST_ARGS[:-1], "2048"]


def test_an_unreachable_api_server_is_retried_counted_and_reported(server: KubeAPI) -> None:
    url = server.url
    server.stop()  # nothing listens on that port any more
    act = KubeActuator(api_client(host=url), namespace=NAMESPACE, deployment=NAME, container="vllm", retry=FAST)
    with pytest.raises(KubeError) as failed:
        act.read()
    assert failed.value.reason == "connection"
    assert act.errors == {"connection": FAST.attempts}


@pytest.mark.parametrize(
    ("status", "complete"),
    [
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}, True),
        ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}, False),
        ({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2}, False),
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1}, False),
        ({}, False),
    ],
)
def test_rollout_is_complete_only_when_every_replica_is_updated_and_ready(
    status: dict[str, int], complete: bool
) -> None:
    obj = {"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}
    assert rollout_complete(obj) is complete


@pytest.mark.parametrize(
    ("observed", "annotation_only", "complete"),
    [
        (4, set(), False),  # generation 5 not seen yet: it may be a new pod template
        (4, {5}, True),  # the sidecar's own annotations-only write made 5: no pod rolls for it
        (3, {5}, False),  # 4 was someone else's, maybe a template change
        (3, {4, 5}, True),
        (5, set(), True),
    ],
)
def test_a_generation_the_sidecars_own_annotation_write_made_is_no_rollout(
    observed: int, annotation_only: set[int], complete: bool
) -> None:
    status = {"observedGeneration": observed, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    obj = {"metadata": {"generation": 5}, "spec": {"replicas": 2}, "status": status}
    assert rollout_complete(obj, annotation_only) is complete


# --- a passed timed trial, recorded on the Deployment ------------------------------------------------------


def window(ratio: float) -> Observation:
    return Observation(True, True, ratio, 5000.0, window_seconds=60.0)


def passed_trial(act: KubeActuator) -> Decision:
    """The real policy judging three passing trial windows on what the actuator reads."""
    state = PolicyState(speculation=act.read().speculation, record=act.read().record)
    for i in range(3):
        decision = decide(window(0.6), state, TRIAL_CONFIG, T0 + 100 + 60 * i)
        state = decision.state
    assert decision.action is Action.RECORD
    return decision


def only_annotations_change(patch: list[dict[str, Any]]) -> bool:
    return all(op["op"] == "test" or op["path"].startswith("/metadata/annotations") for op in patch)


def test_a_passed_trial_is_recorded_by_one_guarded_patch_of_annotations_only(server: KubeAPI) -> None:
    before = server.add_deployment(trial_deployment())
    act = actuator(server)
    decision = passed_trial(act)
    result = act.write_record(decision.state.record, str(decision.action), decision)
    assert result.outcome is Outcome.CHANGED
    [patch] = server.applied_patches()
    assert patch.content_type == JSON_PATCH and only_annotations_change(patch.body)
    version = before["metadata"]["resourceVersion"]
    assert {"op": "test", "path": "/metadata/resourceVersion", "value": version} in patch.body
    after = stored(server)
    assert after["spec"] == before["spec"]  # the pod template is untouched ...
    # ... so no rollout (the real server still bumps the generation: it copies annotations to the ReplicaSet)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + server.annotations_bump_generation
    notes = after["metadata"]["annotations"]
    assert (notes[ann.STATE], notes[ann.REASON], notes[ann.CHANGED_BY]) == ("on", "trial_passed", "sidecar")
    assert notes[ann.CHANGED_AT] == ann.timestamp(T0) and ann.TRIAL not in notes  # counters reset
    assert notes["team"] == "ml"
    assert [(e["reason"], e["type"]) for e in server.events] == [("SpeculationTrialPassed", "Normal")]


def test_a_sidecar_restarted_after_the_record_keeps_speculation_on_at_healthy_traffic(server: KubeAPI) -> None:
    server.add_deployment(trial_deployment())
    act = actuator(server)
    decision = passed_trial(act)
    assert act.write_record(decision.state.record, str(decision.action), decision).changed
    restarted = Controller(actuator(server), TRIAL_CONFIG, read_every=0.0)  # nothing in memory
    decisions = [restarted.step(stats(0.52), T0 + 1000 + 60 * i) for i in range(15)]
    assert {d.reason for d in decisions if d is not None} == {Reason.HEALTHY}
    assert len(server.applied_patches()) == 1 and vllm_container(stored(server))["args"] == LIST_ARGS


def race_a_record(server: KubeAPI, act: KubeActuator, decision: Decision) -> Any:
    server.inject("PATCH", "/deployments/", delay=0.3, times=1)
    results: list[Any] = []
    write = threading.Thread(
        target=lambda: results.append(act.write_record(decision.state.record, str(decision.action), decision))
    )
    write.start()
    time.sleep(0.1)
    write_behind_the_back(server)
    write.join(5)
    return results[0]


def test_a_concurrent_write_fails_the_records_test_op_and_the_pass_goes_back_to_the_policy(server: KubeAPI) -> None:
    server.add_deployment(trial_deployment())
    act = actuator(server)
    result = race_a_record(server, act, passed_trial(act))
    assert result.outcome is Outcome.CONFLICT
    assert [r.status for r in server.requests if r.method == "PATCH"] == [422]
    assert stored(server)["metadata"]["annotations"][ann.REASON] == "trial_start"  # nothing half-done
    assert server.events == []


def test_a_record_decided_on_annotations_that_changed_since_is_not_written(server: KubeAPI) -> None:
    server.add_deployment(trial_deployment())
    act = actuator(server)
    decision = passed_trial(act)
    server.edit(NAMESPACE, NAME, lambda obj: obj["metadata"]["annotations"].update({ann.PIN: "on"}))  # a human pins it
    assert act.write_record(decision.state.record, str(decision.action), decision).outcome is Outcome.CONFLICT
    assert server.applied_patches() == []


def test_a_pass_is_not_recorded_once_speculation_is_gone_from_the_args(server: KubeAPI) -> None:
    server.add_deployment(trial_deployment())
    act = actuator(server)
    decision = passed_trial(act)
    # Someone removed the flags by hand, leaving our annotations alone.
    server.edit(NAMESPACE, NAME, lambda obj: vllm_container(obj).update(args=["--model", "/models/target"]))
    assert act.write_record(decision.state.record, str(decision.action), decision).outcome is Outcome.CONFLICT
    assert server.applied_patches() == []


def test_the_controller_re_reads_after_a_409_and_records_the_pass_on_the_next_window(server: KubeAPI) -> None:
    before = server.add_deployment(trial_deployment())
    controller = Controller(actuator(server), TRIAL_CONFIG, read_every=0.0)
    steps = [controller.step(stats(0.6), T0 + 100 + 60 * i) for i in range(2)]
    assert [d.reason for d in steps if d is not None] == [Reason.TRIAL_RUNNING] * 2
    server.inject("PATCH", "/deployments/", 409, times=1)
    third = controller.step(stats(0.6), T0 + 220)
    assert third is not None and third.action is Action.RECORD
    assert [r.outcome for r in controller.decisions] == ["conflict"]
    # 0.52 would fail a trial; the pass is kept in memory, judged by the ordinary rule, and recorded again.
    fourth = controller.step(stats(0.52), T0 + 280)
    assert fourth is not None and (fourth.action, fourth.reason) == (Action.RECORD, Reason.TRIAL_PASSED)
    assert [r.outcome for r in controller.decisions] == ["conflict", "changed"]
    after = stored(server)
    assert after["metadata"]["annotations"][ann.REASON] == "trial_passed" and after["spec"] == before["spec"]
    assert [r.status for r in server.requests if r.method == "PATCH"] == [409, 200]
    fifth = controller.step(stats(0.52), T0 + 340)
    assert fifth is not None and fifth.reason is Reason.HEALTHY
    assert controller.decision_counts[("record", "trial_passed")] == 2


def test_a_dry_run_judges_the_trial_and_writes_nothing(server: KubeAPI) -> None:
    before = server.add_deployment(trial_deployment())
    controller = Controller(actuator(server), replace(TRIAL_CONFIG, dry_run=True), read_every=0.0)
    decisions = [controller.step(stats(0.6), T0 + 100 + 60 * i) for i in range(5)]
    assert [d.reason for d in decisions if d is not None][2] is Reason.TRIAL_PASSED
    assert [r for r in server.requests if r.method != "GET"] == [] and server.events == []
    assert stored(server) == before


def _toggle_guarded_by_the_resource_version_alone(server: KubeAPI, field: str, value: list[str]) -> list[str]:
    """Disable then enable a container whose `field` holds text the real server encodes otherwise than Python
    (core/patch.py): the patch tests the resourceVersion but not `field`, and both toggles land. Returns what the
    disable left in `field`."""
    made = deployment(command=value) if field == "command" else deployment(args=value)
    before = server.add_deployment(made)
    act = actuator(server)
    result = act.disable("low_acceptance")
    assert result.outcome is Outcome.CHANGED, result.detail
    [patch] = server.applied_patches()
    tests = [op for op in patch.body if op["op"] == "test"]
    assert {"op": "test", "path": "/metadata/resourceVersion", "value": before["metadata"]["resourceVersion"]} in tests
    assert not [op for op in tests if op["path"].endswith(f"/{field}")]
    disabled: list[str] = vllm_container(stored(server))[field]
    server.complete_rollout(NAMESPACE, NAME)
    assert act.enable("manual").changed
    assert vllm_container(stored(server))[field] == value
    return disabled


def test_a_script_with_and_and_is_toggled_guarded_by_the_resource_version(server: KubeAPI) -> None:
    # The real kube-apiserver fails a JSON-patch test on a string holding "&&" (422) although it is what was read.
    script = "cd /srv && exec vllm serve /models/target --spec-tokens 3 --port 8000"
    disabled = _toggle_guarded_by_the_resource_version_alone(server, "command", ["/bin/sh", "-c", script])
    assert disabled[2] == "cd /srv && exec vllm serve /models/target --port 8000"


def test_a_non_ascii_argument_is_toggled_guarded_by_the_resource_version(server: KubeAPI) -> None:
    # Go writes non-ASCII text raw where Python's encoder escapes it: the real server's byte-wise test fails too.
    args = ["--model", "/models/target", "--served-model-name", "modèle-café", "--spec-tokens", "3", "--port", "8000"]
    disabled = _toggle_guarded_by_the_resource_version_alone(server, "args", args)
    assert "modèle-café" in disabled and "--spec-tokens" not in disabled
