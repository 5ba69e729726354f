"""The actuator on a Kubernetes Deployment, through the official client (this package alone imports ``kubernetes``).

A toggle is ONE JSON Patch, built by :func:`sidecar.core.patch.json_patch` from the :func:`sidecar.core.actuator.plan`
of the Deployment as read: a 409/422 means someone else wrote first, so we re-read and decide again, never replay
the patch. Retrying a guarded patch is safe (if the first one landed, the retry fails its ``test`` and the re-read
shows our own write); retries and error counts are :mod:`sidecar.adapters.kube.client`'s. Every toggle emits a
core/v1 Event on the Deployment and one structured (JSON) log line; so do the annotations-only writes (a latch; a
passed timed trial, ``SpeculationTrialPassed``; a removal record rewritten without the credentials an older
sidecar put in it, ``RemovalRecordRedacted``). A disable refused because no flag turns speculation on
(``not_removable``) emits a Warning Event, ``SpeculationNotRemovable``, saying why. Only the holder of the Lease
writes (:mod:`sidecar.adapters.kube.lease`). What is written and why: docs/policy.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from sidecar.adapters.kube.client import Caller, KubeError, RetryPolicy, read_json
from sidecar.adapters.kube.lease import LeaseElector
from sidecar.core import rollout_watch
from sidecar.core.actuator import (
    REDACT,
    REDACT_REASON,
    ActResult,
    Clock,
    Outcome,
    Plan,
    TargetView,
    guard_config,
    plan,
    plan_record,
    plan_redaction,
    plan_reduce_k,
    plan_schedule_k,
    toggle_log_line,
    view_of,
    wall_clock,
)
from sidecar.core.annotations import REMOVED_ARGS, ControlRecord, from_annotations
from sidecar.core.patch import json_patch, pointer, rollout_complete
from sidecar.core.policy import Action, Decision, Reason
from sidecar.core.specargs import DEFAULT_SECRET_FLAGS

log = logging.getLogger("spec_sidecar.kube")

JSON_PATCH = "application/json-patch+json"
COMPONENT = "spec-sidecar"
# The writes that end a rollout watch: putting back what ran before it, and dropping it once the rollout is done.
REVERT, SETTLE = "revert", "settle"


class KubeActuator:
    """The actuator contract (:class:`sidecar.core.actuator.Actuator`) on one container of one Deployment."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        deployment: str,
        container: str,
        identity: str = COMPONENT,
        elector: LeaseElector | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock = wall_clock,
        sleep: Callable[[float], None] = time.sleep,
        manual_conflict_attempts: int = 3,
        secret_flags: Sequence[str] = DEFAULT_SECRET_FLAGS,
    ) -> None:
        self.namespace, self.deployment, self.container = namespace, deployment, container
        self.secret_flags = tuple(secret_flags)
        self.identity, self.elector, self.clock = identity, elector, clock
        self.errors: Counter[str] = Counter()
        self.retry = retry or RetryPolicy()
        self._call = Caller(self.retry, sleep, self.errors)
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self.server = str(api.configuration.host)
        self._manual_attempts = manual_conflict_attempts
        self.target = f"deployment/{namespace}/{deployment} container={container}"
        # Generations our own annotations-only writes made that the deployment controller has not seen yet.
        self._annotation_only: set[int] = set()

    # reading

    def read(self) -> TargetView:
        return self._read()[0]

    def _read(self) -> tuple[TargetView, dict[str, Any], int]:
        return self._view(self._get())

    def _get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(
            f"GET {self.target}",
            lambda: read_json(
                self._apps.read_namespaced_deployment(
                    self.deployment, self.namespace, _preload_content=False, _request_timeout=self.retry.timeout
                )
            ),
        )
        return obj

    def _view(self, obj: dict[str, Any]) -> tuple[TargetView, dict[str, Any], int]:
        observed = (obj.get("status") or {}).get("observedGeneration", 0)
        self._annotation_only = {g for g in self._annotation_only if g > observed}  # seen: forgotten
        containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        index = next((i for i, c in enumerate(containers) if c.get("name") == self.container), None)
        if index is None:
            names = [c.get("name") for c in containers]
            raise KubeError("container_not_found", f"no container {self.container!r} in {self.target} ({names})")
        current = containers[index]
        record = from_annotations(obj["metadata"].get("annotations"))
        image = current.get("image")
        view = view_of(
            self.target,
            current.get("command"),
            current.get("args"),
            record,
            rollout_complete(obj, self._annotation_only),
            image=image if isinstance(image, str) else None,
        )
        watch = rollout_watch.decode((obj["metadata"].get("annotations") or {}).get(rollout_watch.WATCH))
        return replace(view, watch=watch), obj, index

    # writing

    def disable(self, reason: str, decision: Decision | None = None) -> ActResult:
        return self._toggle(Action.DISABLE, reason, decision)

    def enable(self, reason: str, decision: Decision | None = None, *, force: bool = False) -> ActResult:
        return self._toggle(Action.ENABLE, reason, decision, force=force)

    def reduce_k(self, k: int | None, reason: str, decision: Decision | None = None) -> ActResult:
        return self._write(
            str(Action.REDUCE_K),
            reason,
            lambda view: plan_reduce_k(view, k, reason, decision, self.clock(), secret_flags=self.secret_flags),
            automatic=decision is not None,
        )

    def schedule_k(
        self, schedule: Sequence[Sequence[int]] | None, reason: str, decision: Decision | None = None
    ) -> ActResult:
        return self._write(
            str(Action.SCHEDULE_K),
            reason,
            lambda view: plan_schedule_k(
                view, schedule, reason, decision, self.clock(), secret_flags=self.secret_flags
            ),
            automatic=decision is not None,
        )

    def write_record(self, record: ControlRecord, action: str, decision: Decision | None = None) -> ActResult:
        return self._write(
            action,
            str(record.reason or action),
            lambda view: plan_record(view, record, action, decision),
            automatic=decision is not None,
        )

    def redact_record(self) -> ActResult:
        # Planned afresh on every read, so retrying after a conflict cannot write over someone else's change.
        return self._write(REDACT, REDACT_REASON, lambda view: plan_redaction(view, self.secret_flags), automatic=False)

    def _toggle(self, action: Action, reason: str, decision: Decision | None, *, force: bool = False) -> ActResult:
        return self._write(
            str(action),
            reason,
            lambda view: plan(
                view, action, reason, decision, self.clock(), force=force, secret_flags=self.secret_flags
            ),
            automatic=decision is not None,
        )

    def _write(
        self, action: str, reason: str, planner: Callable[[TargetView], Plan | ActResult], *, automatic: bool
    ) -> ActResult:
        # An automatic decision was made on an older read: after a conflict it goes back to the policy.
        attempts = 1 if automatic else self._manual_attempts
        result: ActResult | None = None
        for _ in range(attempts):
            if self.elector is not None and not self.elector.acquire_or_renew():
                return ActResult(Outcome.NOT_LEADER, action, f"{self.elector.holder or 'another sidecar'} leads")
            try:
                result = self._write_once(action, reason, planner)
            except KubeError as exc:
                return ActResult(Outcome.ERROR, action, str(exc))
            if result.outcome is not Outcome.CONFLICT:
                return result
        assert result is not None
        return result

    def _write_once(self, action: str, reason: str, planner: Callable[[TargetView], Plan | ActResult]) -> ActResult:
        view, obj, index = self._read()
        planned = planner(view)
        if isinstance(planned, ActResult):
            if planned.outcome is Outcome.NOT_REMOVABLE:  # people must hear why the sidecar does not act
                self._post_event("SpeculationNotRemovable", planned.detail, "Warning", obj)
            return planned
        rewrites = (planned.command, planned.args) != (view.command, view.args)
        if rewrites and action != REVERT:
            refused = guard_config(view, planned, action)
            if refused is not None:  # people must hear why the sidecar does not act
                self._post_event("SpeculationConfigRefused", refused.detail, "Warning", obj)
                return refused
        ops = json_patch(obj, index, self.container, planned)
        annotation_only = (planned.args, planned.command) == (view.args, view.command)
        ops += self._watch_ops(view, obj, planned, action, rewrites=rewrites, ops=ops)
        sent = 0

        def send() -> Any:
            nonlocal sent
            sent += 1
            return self._patch(ops)

        try:
            self._call(f"PATCH {self.target}", send)
        except KubeError as exc:
            if exc.status not in (409, 422):
                raise
            written = self._get()
            after = self._view(written)[0]
            # Only a patch sent more than once can have landed unseen. Another sidecar (no lease) deciding the
            # same toggle in the same millisecond writes an identical record: that write is not ours to report.
            landed = (after.record, after.args, after.command) == (planned.record, planned.args, planned.command)
            if sent > 1 and landed:
                # Our own patch landed and its response was lost; the retry then failed its test.
                after = self._ours(obj, written, annotation_only)
                return self._done(action, reason, planned, after, obj)
            return ActResult(Outcome.CONFLICT, action, f"{self.target} changed since read: {exc.detail}", after)
        after = self._ours(obj, self._get(), annotation_only)
        return self._done(action, reason, planned, after, obj)

    def _ours(self, before: Mapping[str, Any], written: dict[str, Any], annotation_only: bool) -> TargetView:
        """The Deployment as read after our write. When the write changed annotations alone and the generation
        moved by exactly one (nobody else wrote in between), that generation rolls no pod: the rollout check
        ignores it until the deployment controller has seen it (docs/testing.md, where the real server differs).
        """
        generation = written["metadata"].get("generation", 0)
        if annotation_only and generation == before["metadata"].get("generation", 0) + 1:
            self._annotation_only.add(generation)
        return self._view(written)[0]

    def _watch_ops(
        self,
        view: TargetView,
        obj: Mapping[str, Any],
        planned: Plan,
        action: str,
        *,
        rewrites: bool,
        ops: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The rollout watch goes with the write it watches, in the same patch: a write that changes the args
        starts one (docs/policy.md, "After a write"); a revert or a settled rollout drops it."""
        annotations = obj["metadata"].get("annotations") or {}
        path = pointer("metadata", "annotations", rollout_watch.WATCH)
        if action in (REVERT, SETTLE):
            return [{"op": "remove", "path": path}] if rollout_watch.WATCH in annotations else []
        if not rewrites:
            return []
        before, previous = (view.command, view.args), view.record
        if view.watch is not None and not view.rollout_complete:
            # A write on top of a rollout still under watch: what last ran is what that watch would put back.
            undone = rollout_watch.undone(view.watch, view.command, view.args)
            if undone is not None:
                before, previous = undone, rollout_watch.revert_record(view.watch, view.record, "")
        watch = rollout_watch.watch_for(
            action,
            self.clock(),
            before=before,
            after=(planned.command, planned.args),
            previous=previous,
            secret_flags=self.secret_flags,
        )
        value = rollout_watch.encode(watch)
        if "annotations" not in obj["metadata"] and not any(o["path"] == "/metadata/annotations" for o in ops):
            return [{"op": "add", "path": "/metadata/annotations", "value": {rollout_watch.WATCH: value}}]
        return [{"op": "add", "path": path, "value": value}]

    # Both are planned again on each fresh read (the plan re-checks that the rollout is still the watched one and
    # still not done), so unlike a policy decision they may retry after a conflict: while pods come and go the
    # deployment controller writes the status often, and each write moves the resourceVersion the patch tests.

    def revert_rollout(self, timeout: float) -> ActResult:
        return self._write(REVERT, "rollout not ready", lambda view: self._revert_plan(view, timeout), automatic=False)

    def settle_rollout(self) -> ActResult:
        return self._write(SETTLE, "rollout ready", _settle_plan, automatic=False)

    def _revert_plan(self, view: TargetView, timeout: float) -> Plan | ActResult:
        watch = view.watch
        if watch is None:
            return ActResult(Outcome.UNCHANGED, REVERT, "no rollout is watched", view)
        # The bound was judged by the caller; what can have changed since its read is the rollout finishing.
        progress = rollout_watch.verdict(watch, (view.command, view.args), view.rollout_complete, 0.0, timeout=0)
        if progress is not rollout_watch.Progress.PENDING:
            return ActResult(Outcome.CONFLICT, REVERT, f"the watched rollout is {progress} now", view)
        undone = rollout_watch.undone(watch, view.command, view.args)
        latch = rollout_watch.revert_latch(watch, timeout, restored=undone is not None)
        if undone is None:  # latch and alert all the same: nothing automatic acts on it any more
            return Plan(view.command, view.args, replace(view.record, latched=latch), ())
        command, args = undone
        record = rollout_watch.revert_record(watch, view.record, latch)
        return Plan(command, args, record, (f"put back the config from before {watch.action}",))

    def _patch(self, ops: list[dict[str, Any]]) -> Any:
        return self._apps.patch_namespaced_deployment(
            self.deployment,
            self.namespace,
            ops,
            _content_type=JSON_PATCH,
            _preload_content=False,
            _request_timeout=self.retry.timeout,
        )

    def _done(self, action: str, reason: str, planned: Plan, after: TargetView, before: Mapping[str, Any]) -> ActResult:
        detail = f"{action} {self.target}: {reason}"
        log.info(toggle_log_line(action, reason, self.target, planned, identity=self.identity))
        self._event(action, reason, planned, before)
        return ActResult(Outcome.CHANGED, action, detail, after, planned.flags)

    def _event(self, action: str, reason: str, planned: Plan, deployment: Mapping[str, Any]) -> None:
        kinds = {
            "disable": "SpeculationDisabled",
            "enable": "SpeculationEnabled",
            "reduce-k": "SpeculativeTokensReduced",
            "schedule-k": "SpeculationScheduled",
            "latch": "SpeculationLatched",
            "record": "SpeculationTrialPassed" if reason == Reason.TRIAL_PASSED else "SpeculationControl",
            REDACT: "RemovalRecordRedacted",
            REVERT: "SpeculationRolloutReverted",
        }
        flags = "; ".join(planned.flags)
        message = f"{action}: {reason}" + (f" ({flags})" if flags else "")
        if reason == Reason.TRIAL_PASSED:
            message = "timed trial passed: speculation stays on; trial counters reset"
        if action == REDACT:  # says which annotation changed and why, never what it held
            message = (
                f"the {REMOVED_ARGS} annotation held values of credential flags (written by an older sidecar, or "
                "before --secret-flags named them); rewritten without them. enable still restores the same args"
            )
        if action == REVERT:
            message = str(planned.record.latched)
        if action == SETTLE:  # the end of a watch is logged, not announced
            return
        kind = kinds.get(action, "SpeculationControl")
        self._post_event(kind, message, "Warning" if action in ("latch", REVERT) else "Normal", deployment)

    def _post_event(self, kind: str, message: str, event_type: str, deployment: Mapping[str, Any]) -> None:
        now = datetime.fromtimestamp(self.clock(), UTC)
        meta = deployment["metadata"]
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.deployment}.", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                api_version="apps/v1",
                kind="Deployment",
                name=self.deployment,
                namespace=self.namespace,
                uid=meta.get("uid"),
            ),
            reason=kind,
            message=message[:1024],
            type=event_type,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self.identity,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self._call(
                "POST event",
                lambda: self._core.create_namespaced_event(
                    self.namespace, event, _preload_content=False, _request_timeout=self.retry.timeout
                ),
            )
        except KubeError as exc:  # the write happened (or was refused); a lost Event is counted and logged
            self.errors["event_failed"] += 1
            log.warning("could not emit the Event for %s: %s", self.target, exc)


def _settle_plan(view: TargetView) -> Plan | ActResult:
    """Drop the watch (args and record as they are) once the watched write rolled out or someone else's replaced it."""
    if view.watch is None:
        return ActResult(Outcome.UNCHANGED, SETTLE, "no rollout is watched", view)
    return Plan(view.command, view.args, view.record, ())
