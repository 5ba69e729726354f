"""The actuator on a Kubernetes Deployment, through the official client. The only module importing ``kubernetes``.

A toggle is ONE JSON Patch (``application/json-patch+json``: args are an atomic list, never strategic merge)
that changes the container's args/command and our annotations together, guarded by ``test`` ops on
``/metadata/resourceVersion`` and on the args/command as read. A 409/422 means someone else wrote first: we
re-read and decide again, never replay the patch. Transient errors (5xx, 429, timeouts, refused connections)
are retried with exponential backoff; retrying a guarded patch is safe (if the first one landed, the retry
fails its ``test`` and the re-read shows our own write). Every error is counted by reason in ``errors``.
Every toggle emits a core/v1 Event on the Deployment and one structured (JSON) log line; so do the
annotations-only writes (a latch; a passed timed trial, ``SpeculationTrialPassed``). A disable refused because
no flag turns speculation on (``not_removable``) emits a Warning Event, ``SpeculationNotRemovable``, saying why.

Only the holder of a ``coordination.k8s.io/v1`` Lease writes (:class:`LeaseElector`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sidecar.actuator import (
    ActResult,
    Clock,
    Outcome,
    Plan,
    TargetError,
    TargetView,
    plan,
    plan_record,
    view_of,
    wall_clock,
)
from sidecar.core.annotations import ControlRecord, from_annotations, to_annotations
from sidecar.core.policy import Action, Decision, Reason
from sidecar.core.specargs import DEFAULT_SECRET_FLAGS

log = logging.getLogger("spec_sidecar.kube")

JSON_PATCH = "application/json-patch+json"
COMPONENT = "spec-sidecar"
RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


class KubeError(TargetError):
    """A request that failed for good (after retries, or at once for 403/404...). ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(reason, detail)
        self.status = status


def api_client(
    *, host: str | None = None, kubeconfig: str | None = None, context: str | None = None, token: str | None = None
) -> client.ApiClient:
    """In-cluster config when running in a pod, else a kubeconfig, else an explicit host (tests)."""
    configuration = client.Configuration()
    if host is not None:
        configuration.host = host
        if token:
            configuration.api_key = {"authorization": f"Bearer {token}"}
    else:
        try:
            if kubeconfig is None and context is None and _in_cluster():
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context, client_configuration=configuration
                )
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise KubeError("no_config", f"no usable Kubernetes configuration ({where}: {exc})") from exc
    configuration.retries = 0  # we retry ourselves, counted and with backoff; urllib3 must not hide failures
    return client.ApiClient(configuration)


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


# --- retries ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    timeout: tuple[float, float] = (3.0, 10.0)  # connect, read (seconds)


class Caller:
    """Runs one API request with retries on transient failures; counts every failure by reason."""

    def __init__(self, retry: RetryPolicy, sleep: Callable[[float], None], errors: Counter[str]) -> None:
        self.retry, self.sleep, self.errors = retry, sleep, errors

    def __call__(self, what: str, request: Callable[[], T]) -> T:
        delay = self.retry.base_delay
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return request()
            except ApiException as exc:
                reason = _status_reason(exc.status)
                self.errors[reason] += 1
                if exc.status not in RETRIABLE_STATUS or attempt == self.retry.attempts:
                    raise KubeError(reason, f"{what}: HTTP {exc.status} {_message(exc)}", exc.status) from exc
            except urllib3.exceptions.HTTPError as exc:
                reason = "timeout" if _is_timeout(exc) else "connection"
                self.errors[reason] += 1
                if attempt == self.retry.attempts:
                    raise KubeError(reason, f"{what}: {_connection_problem(exc)}") from exc
            log.warning("%s failed (attempt %d of %d); retrying in %.1fs", what, attempt, self.retry.attempts, delay)
            self.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")


def _status_reason(status: int | None) -> str:
    return {
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        422: "invalid",
        429: "throttled",
        401: "unauthorized",
    }.get(status or 0, "server_error" if (status or 0) >= 500 else f"http_{status}")


def _is_timeout(exc: BaseException) -> bool:
    cause = getattr(exc, "reason", None) or exc
    # urllib3 derives a refused connection (NewConnectionError) from ConnectTimeoutError: not a timeout here.
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(cause, urllib3.exceptions.TimeoutError)


def _connection_problem(exc: urllib3.exceptions.HTTPError) -> str:
    """The cause in a few words: urllib3's own text repeats the pool, the URL and the connection's repr."""
    if _is_timeout(exc):
        return "timed out"
    cause = getattr(exc, "reason", None) or exc
    # "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] Connection refused"
    return str(cause).rpartition(": ")[2] or type(cause).__name__


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        return str(exc.reason or "")


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


# --- the JSON Patch --------------------------------------------------------------------------------------


def pointer(*parts: str | int) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


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
        if field in current:
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


def rollout_complete(deployment: Mapping[str, Any]) -> bool:
    """updatedReplicas == readyReplicas == replicas, and the controller has seen the latest generation."""
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    replicas = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False
    return bool(status.get("updatedReplicas", 0) == status.get("readyReplicas", 0) == replicas)


# --- the actuator ----------------------------------------------------------------------------------------


class KubeActuator:
    """The actuator contract (:class:`sidecar.actuator.Actuator`) on one container of one Deployment."""

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

    # reading

    def read(self) -> TargetView:
        return self._read()[0]

    def _read(self) -> tuple[TargetView, dict[str, Any], int]:
        obj = self._call(
            f"GET {self.target}",
            lambda: _json(
                self._apps.read_namespaced_deployment(
                    self.deployment, self.namespace, _preload_content=False, _request_timeout=self.retry.timeout
                )
            ),
        )
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
            rollout_complete(obj),
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
        try:
            self._call(f"PATCH {self.target}", lambda: self._patch(ops))
        except KubeError as exc:
            if exc.status not in (409, 422):
                raise
            after, _, _ = self._read()
            if after.record == planned.record and (after.args, after.command) == (planned.args, planned.command):
                # Our own patch landed and its response was lost; the retry then failed its test.
                return self._done(action, reason, planned, after, obj)
            return ActResult(Outcome.CONFLICT, action, f"{self.target} changed since read: {exc.detail}", after)
        after, _, _ = self._read()
        return self._done(action, reason, planned, after, obj)

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
        log.info(
            json.dumps(
                {
                    "event": "speculation_toggle" if action in ("disable", "enable") else "control_record",
                    "action": action,
                    "reason": reason,
                    "target": self.target,
                    "flags": list(planned.flags),
                    "by": str(planned.record.changed_by or ""),
                    "identity": self.identity,
                },
                sort_keys=True,
            )
        )
        self._event(action, reason, planned, before)
        return ActResult(Outcome.CHANGED, action, detail, after, planned.flags)

    def _event(self, action: str, reason: str, planned: Plan, deployment: Mapping[str, Any]) -> None:
        kinds = {
            "disable": "SpeculationDisabled",
            "enable": "SpeculationEnabled",
            "latch": "SpeculationLatched",
            "record": "SpeculationTrialPassed" if reason == Reason.TRIAL_PASSED else "SpeculationControl",
        }
        flags = "; ".join(planned.flags)
        message = f"{action}: {reason}" + (f" ({flags})" if flags else "")
        if reason == Reason.TRIAL_PASSED:
            message = "timed trial passed: speculation stays on; trial counters reset"
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


# --- leader election -------------------------------------------------------------------------------------


class LeaseElector:
    """Holds a coordination.k8s.io/v1 Lease; writes are optimistic (resourceVersion), so one racer wins."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        clock: Clock = wall_clock,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        errors: Counter[str] | None = None,
    ) -> None:
        self.namespace, self.name, self.identity, self.duration, self.clock = namespace, name, identity, duration, clock
        self.retry = retry or RetryPolicy(attempts=2)
        self.errors: Counter[str] = errors if errors is not None else Counter()
        self._call = Caller(self.retry, sleep, self.errors)
        self._api = client.CoordinationV1Api(api)
        self.holder: str | None = None
        self.is_leader = False

    def acquire_or_renew(self) -> bool:
        try:
            self.is_leader = self._try()
        except KubeError as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            self.is_leader = False
        return self.is_leader

    def release(self) -> None:
        """Give the lease up on shutdown (every toggle restarts the pod), so a successor need not wait it out."""
        if not self.is_leader:
            return
        try:
            lease = self._call(
                f"GET lease {self.name}",
                lambda: _json(
                    self._api.read_namespaced_lease(
                        self.name, self.namespace, _preload_content=False, _request_timeout=self.retry.timeout
                    )
                ),
            )
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(
                    name=self.name, namespace=self.namespace, resource_version=lease["metadata"]["resourceVersion"]
                ),
                spec=client.V1LeaseSpec(
                    lease_duration_seconds=spec.get("leaseDurationSeconds"),
                    lease_transitions=spec.get("leaseTransitions"),
                ),
            )
            self._call(
                f"PUT lease {self.name}",
                lambda: self._api.replace_namespaced_lease(
                    self.name, self.namespace, body, _preload_content=False, _request_timeout=self.retry.timeout
                ),
            )
        except KubeError as exc:  # it will expire on its own
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
        finally:
            self.is_leader = False

    def _try(self) -> bool:
        now = self.clock()
        try:
            lease = self._call(
                f"GET lease {self.name}",
                lambda: _json(
                    self._api.read_namespaced_lease(
                        self.name, self.namespace, _preload_content=False, _request_timeout=self.retry.timeout
                    )
                ),
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            return self._write(None, now)
        spec = lease.get("spec") or {}
        self.holder = spec.get("holderIdentity") or None
        renewed = _parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or self.duration
        expired = renewed is None or renewed + duration < now
        if self.holder in (None, self.identity) or expired:
            return self._write(lease, now)
        return False

    def _write(self, lease: Mapping[str, Any] | None, now: float) -> bool:
        spec = (lease or {}).get("spec") or {}
        mine = spec.get("holderIdentity") == self.identity
        stamp = datetime.fromtimestamp(now, UTC)
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=(lease or {}).get("metadata", {}).get("resourceVersion"),
            ),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=round(self.duration),
                acquire_time=_parse_datetime(spec.get("acquireTime")) if mine else stamp,
                renew_time=stamp,
                lease_transitions=(spec.get("leaseTransitions") or 0) + (0 if mine or lease is None else 1),
            ),
        )
        try:
            if lease is None:
                self._call(
                    f"POST lease {self.name}",
                    lambda: self._api.create_namespaced_lease(
                        self.namespace, body, _preload_content=False, _request_timeout=self.retry.timeout
                    ),
                )
            else:
                self._call(
                    f"PUT lease {self.name}",
                    lambda: self._api.replace_namespaced_lease(
                        self.name, self.namespace, body, _preload_content=False, _request_timeout=self.retry.timeout
                    ),
                )
        except KubeError as exc:
            if exc.status == 409:  # someone else created or renewed it first
                return False
            raise
        self.holder = self.identity
        return True


def _parse_time(text: str | None) -> float | None:
    parsed = _parse_datetime(text)
    return None if parsed is None else parsed.timestamp()


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
