"""I/O to other systems: the Kubernetes API (``kube``, the only code importing the Kubernetes client), local
manifest files, Prometheus' query API (docs/architecture.md)."""
