"""The Kubernetes API client: configuration (in-cluster, a kubeconfig, or a bare host) and retried, counted calls.

Transient errors (5xx, 429, timeouts, refused connections) are retried with exponential backoff; every failure is
counted by reason (a metric label) and a request that fails for good raises :class:`KubeError`, which is a
:class:`sidecar.core.actuator.TargetError` like every other error of an actuator. This package is the only code
that imports ``kubernetes`` (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sidecar.core.actuator import TargetError

log = logging.getLogger("spec_sidecar.kube")

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
                # $KUBECONFIG read now, not when the client was imported (the client's own default).
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                    context=context,
                    client_configuration=configuration,
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


def read_json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data
