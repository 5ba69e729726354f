"""The namespace this pod runs in, from its service account (no Kubernetes client needed to read a file)."""

from __future__ import annotations

from pathlib import Path

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str:
    """The pod's own namespace, else "default" (not in a pod, or no service account mounted)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"
