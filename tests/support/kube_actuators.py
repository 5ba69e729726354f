"""The Kubernetes actuator as the adapter tests build it: aimed at the test Deployment of `tests.kubeapi.manifests`
on a server URL (the test API server or the real one's recording proxy), with retries short enough for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from tests.kubeapi.manifests import NAME, NAMESPACE
from tests.support.kube_records import T0

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, timeout=(1.0, 0.5))


def actuator_on(url: str, *, clock: Callable[[], float] = lambda: T0, **kwargs: Any) -> KubeActuator:
    """The actuator on the test Deployment's `vllm` container, as pod-a, with FAST retries unless given others."""
    kwargs.setdefault("identity", "pod-a")
    kwargs.setdefault("retry", FAST)
    return KubeActuator(
        api_client(host=url), namespace=NAMESPACE, deployment=NAME, container="vllm", clock=clock, **kwargs
    )
