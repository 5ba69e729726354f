"""The sidecar's HTTP side: one listener for /metrics, /healthz, /readyz, /api/* and /status, in front of the tap
(docs/architecture.md; the metrics it serves are docs/metrics.md)."""
