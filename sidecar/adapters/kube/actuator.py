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
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from sidecar.adapters.kube.client import Caller, KubeError, RetryPolicy, read_json
from sidecar.adapters.kube.lease import LeaseElector
from sidecar.core.actuator import (
    REDACT,
    REDACT_REASON,
    ActResult,
    Clock,
    Outcome,
    Plan,
    TargetView,
    plan,
    plan_record,
    plan_redaction,
    toggle_log_line,
    view_of,
    wall_clock,
)
from sidecar.core.annotations import REMOVED_ARGS, ControlRecord, from_annotations
from sidecar.core.patch import json_patch, rollout_complete
from sidecar.core.policy import Action, Decision, Reason
from sidecar.core.specargs import DEFAULT_SECRET_FLAGS

log = logging.getLogger("spec_sidecar.kube")

JSON_PATCH = "application/json-patch+json"
COMPONENT = "spec-sidecar"


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
        return view, obj, index

    # writing

    def disable(self, reason: str, decision: Decision | None = None) -> ActResult:
        return self._toggle(Action.DISABLE, reason, decision)

    def enable(self, reason: str, decision: Decision | None = None, *, force: bool = False) -> ActResult:
        return self._toggle(Action.ENABLE, reason, decision, force=force)

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
        ops = json_patch(obj, index, self.container, planned)
        annotation_only = (planned.args, planned.command) == (view.args, view.command)
        try:
            self._call(f"PATCH {self.target}", lambda: self._patch(ops))
        except KubeError as exc:
            if exc.status not in (409, 422):
                raise
            written = self._get()
            after = self._view(written)[0]
            if after.record == planned.record and (after.args, after.command) == (planned.args, planned.command):
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
            "latch": "SpeculationLatched",
            "record": "SpeculationTrialPassed" if reason == Reason.TRIAL_PASSED else "SpeculationControl",
            REDACT: "RemovalRecordRedacted",
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
        kind = kinds.get(action, "SpeculationControl")
        self._post_event(kind, message, "Warning" if action == "latch" else "Normal", deployment)

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
