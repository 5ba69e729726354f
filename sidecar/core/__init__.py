"""The pure core: plain values in, plain values out; no network, Kubernetes, web framework, asyncio or Prometheus
client (an import-linter contract; docs/architecture.md). The math is docs/math.md, the rule docs/policy.md."""
