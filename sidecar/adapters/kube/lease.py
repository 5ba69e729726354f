"""Leader election on a ``coordination.k8s.io/v1`` Lease: only its holder writes to the Deployment.

Writes are optimistic (``resourceVersion``), so of two replicas racing for the Lease one wins and the other
sees a 409. The holder renews it while alive and hands it over on shutdown (docs/policy.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from sidecar.adapters.kube.client import Caller, KubeError, RetryPolicy, read_json
from sidecar.core.actuator import Clock, wall_clock

log = logging.getLogger("spec_sidecar.kube")


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
            lease = self._read()
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

    def _read(self) -> dict[str, Any]:
        return self._call(
            f"GET lease {self.name}",
            lambda: read_json(
                self._api.read_namespaced_lease(
                    self.name, self.namespace, _preload_content=False, _request_timeout=self.retry.timeout
                )
            ),
        )

    def _try(self) -> bool:
        now = self.clock()
        try:
            lease = self._read()
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
        stamp = _micro_time(datetime.fromtimestamp(now, UTC))
        acquired = _parse_datetime(spec.get("acquireTime"))
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=(lease or {}).get("metadata", {}).get("resourceVersion"),
            ),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=round(self.duration),
                acquire_time=(acquired and _micro_time(acquired)) if mine else stamp,
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


class _MicroTime(datetime):
    """A Lease's time as the API server parses it (MicroTime): always six fraction digits. The client serializes
    a datetime with isoformat(), which drops the fraction on a whole second; the real server refuses that (400)."""

    def isoformat(self, sep: str = "T", timespec: str = "microseconds") -> str:
        return super().isoformat(sep, timespec)


def _micro_time(moment: datetime) -> datetime:
    return _MicroTime.combine(moment.date(), moment.timetz())


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
