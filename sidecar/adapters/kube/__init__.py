"""The Kubernetes adapter: client configuration and retries (``client``), the Deployment actuator (``actuator``),
the Lease (``lease``) and the pod's own namespace (``namespace``). docs/policy.md says what it writes; the
RBAC it needs is in docs/install.md."""
