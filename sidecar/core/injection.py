"""``spec-sidecar inject``'s transformation: add the sidecar to the pod of a vLLM someone else deploys.

Pure: it takes the parsed documents (mappings, from any YAML library; ruamel's round-trip ones keep their
comments because they are edited in place) and returns what to add. What it adds is what the Helm chart renders
beside its own vLLM (deploy/helm/spec-sidecar/templates/deployment.yaml): the same container, args, probes,
ports, resources, security context and volumes, so a test compares the two. Injecting twice gives the same
documents: an existing sidecar container, volume or RBAC object of the same name is replaced where it stands.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

SIDECAR = "spec-sidecar"
TMP_VOLUME = "sidecar-tmp"
TOKEN_VOLUME = "kube-api-access"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VLLM_DEFAULT_PORT = 8000  # vLLM's own default for --port

# The chart's sidecar defaults (values.yaml, sidecar.*). tests/deploy/test_inject.py renders the
# chart and fails when these drift from it.
TAP_PORT = 8081
METRICS_PORT = 8082
RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}
SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
LIVENESS: dict[str, Any] = {
    "httpGet": {"path": "/healthz", "port": "metrics"},
    "periodSeconds": 10,
    "timeoutSeconds": 3,
    "failureThreshold": 6,
}
READINESS: dict[str, Any] = {
    "httpGet": {"path": "/readyz", "port": "metrics"},
    "periodSeconds": 5,
    "timeoutSeconds": 3,
    "failureThreshold": 3,
}
# Service ports, as the chart's Service numbers them.
SERVICE_HTTP_PORT = 8000
SERVICE_METRICS_PORT = 8002
SERVICE_VLLM_PORT = 8001

# Where each kind keeps its pod spec. Only a Deployment can be acted on (the actuator patches Deployments);
# in the others the sidecar measures and exports.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Pod": ("spec",),
    # KServe: the runtime's containers become the predictor pod's (RawDeployment mode).
    "ServingRuntime": ("spec",),
    "ClusterServingRuntime": ("spec",),
}
ACTABLE_KINDS = frozenset({"Deployment"})
LIST_KINDS = frozenset({"List", "ResourceList"})
# What the API server writes into an object (`kubectl get -o yaml` prints it). Kept, resourceVersion would make
# `kubectl apply` fail on any change since the get (a status update is enough), and status, uid and the rest
# would be recorded as if the user had written them: inject drops them from the workloads it changes.
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)  # kubectl's List, and a KRM function's input (kustomize)

# How vLLM is started: `vllm serve ...`, or the OpenAI server module, possibly inside a shell script.
_LAUNCH = re.compile(r"(?:^|[\s;&|(/\"'])vllm\s+serve\b|\bvllm\.entrypoints\.openai\.api_server\b")


class InjectionError(ValueError):
    """What cannot be injected, said in one line with what to do instead."""


@dataclass(frozen=True)
class InjectOptions:
    image: str
    container: str | None = None  # the vLLM container's name; found by its image or command when None
    workload: str | None = None  # only this workload, by name, when the input holds several
    namespace: str | None = None  # when the manifest has none (kustomize bases, GitOps repos)
    service_account: str | None = None
    measure_only: bool = False
    config: tuple[tuple[str, str], ...] = ()  # run settings as (field name, value): SPEC_SIDECAR_<NAME>
    with_rbac: bool = False
    with_service: bool = False
    pull_policy: str = "IfNotPresent"


@dataclass
class Injected:
    """One workload the sidecar went into."""

    kind: str
    name: str
    namespace: str | None
    vllm_container: str
    vllm_port: int
    acts: bool
    service_account: str | None


@dataclass
class Outcome:
    injected: list[Injected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Doc = MutableMapping[str, Any]


def inject(docs: MutableSequence[Any], options: InjectOptions) -> Outcome:
    """Add the sidecar to every workload in ``docs`` that runs vLLM (or to ``options.workload``), in place,
    and append (or update in place) the RBAC objects and Service asked for. Raises InjectionError."""
    outcome = Outcome()
    seen: list[str] = []
    for doc in list(_objects(docs)):
        kind, name = str(doc.get("kind") or ""), _name(doc)
        path = POD_SPEC_PATHS.get(kind)
        if path is None or (options.workload is not None and name != options.workload):
            continue
        seen.append(f"{kind} {name}")
        pod = _dig(doc, path)
        if pod is None:
            continue
        vllm = _vllm_container(pod, kind, name, options.container)
        if vllm is None:
            continue
        outcome.injected.append(_inject_one(doc, pod, vllm, options, outcome.notes))
    if not outcome.injected:
        raise InjectionError(_nothing_found(docs, seen, options))
    for done in outcome.injected:
        for extra in _extras(done, docs, options):
            _upsert(docs, extra)
    return outcome


def _inject_one(doc: Doc, pod: Doc, vllm: Doc, options: InjectOptions, notes: list[str]) -> Injected:
    kind, name = str(doc["kind"]), _name(doc)
    _drop_server_fields(doc)
    namespace = options.namespace or _str(_dig(doc, ("metadata", "namespace")))
    acts = kind in ACTABLE_KINDS and not options.measure_only
    if kind not in ACTABLE_KINDS and not options.measure_only:
        notes.append(f"{kind} {name}: the sidecar measures and exports only (it can turn speculation off on a "
                     "Deployment, not on a " + kind + ")")  # fmt: skip
    port = vllm_port(vllm)
    account = None
    if acts:
        account = _service_account(pod, name, options, notes, kind)
    container = sidecar_container(
        image=options.image,
        vllm_port=port,
        deployment=name if acts else None,
        namespace=namespace,
        vllm_container=str(vllm["name"]),
        config=options.config,
        pull_policy=options.pull_policy,
    )
    _put_named(_list_at(pod, "containers"), container)
    volumes = _list_at(pod, "volumes")
    _put_named(volumes, tmp_volume())
    if acts:
        _put_named(volumes, token_volume())
    else:
        _drop_named(volumes, TOKEN_VOLUME)
    return Injected(kind, name, namespace, str(vllm["name"]), port, acts, account)


def _service_account(pod: Doc, name: str, options: InjectOptions, notes: list[str], kind: str) -> str:
    """The sidecar's identity: given, or the pod's own if it has one (its cloud identity may depend on it), or
    <deployment>-spec-sidecar. Only the sidecar container mounts a token, as the chart does."""
    current = _str(pod.get("serviceAccountName"))
    ours = own_service_account(name)
    account = options.service_account or (current if current and current != "default" else ours)
    pod["serviceAccountName"] = account
    if account == ours or options.service_account:
        # The engine runs model code: only the sidecar container gets a token (projected below).
        pod["automountServiceAccountToken"] = False
    elif pod.get("automountServiceAccountToken") is not False:
        notes.append(
            f"{kind} {name} keeps its ServiceAccount {account!r}, whose token every container mounts: the Role "
            "lets them all patch this Deployment; --service-account NAME gives the sidecar its own"
        )
    return account


def _drop_server_fields(doc: Doc) -> None:
    doc.pop("status", None)
    metadata = doc.get("metadata")
    if not isinstance(metadata, MutableMapping):
        return
    for key in SERVER_FIELDS:
        metadata.pop(key, None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, MutableMapping):
        for key in SERVER_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            del metadata["annotations"]


def own_service_account(deployment: str) -> str:
    return f"{deployment}-{SIDECAR}"


def sidecar_container(
    *,
    image: str,
    vllm_port: int,
    deployment: str | None,
    namespace: str | None,
    vllm_container: str,
    config: Sequence[tuple[str, str]] = (),
    pull_policy: str = "IfNotPresent",
) -> dict[str, Any]:
    """The container the chart renders (templates/deployment.yaml), key for key. ``deployment`` None: measure and
    export only (no --deployment, no token)."""
    args = [
        "run",
        "--vllm-url",
        f"http://127.0.0.1:{vllm_port}",
        "--listen",
        f"0.0.0.0:{TAP_PORT}",
        "--metrics-listen",
        f"0.0.0.0:{METRICS_PORT}",
    ]
    if deployment is not None:
        args += ["--deployment", deployment]
        if namespace:  # else the sidecar takes its pod's own namespace
            args += ["--namespace", namespace]
        args += ["--container", vllm_container]
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    # Sorted by name, as Helm ranges over the chart's sidecar.config.
    env += [{"name": f"SPEC_SIDECAR_{key.upper()}", "value": value} for key, value in sorted(config)]
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if deployment is not None:
        mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    return {
        "name": SIDECAR,
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": args,
        "ports": [
            {"name": "tap", "containerPort": TAP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": _copy(RESOURCES),
        "securityContext": _copy(SECURITY_CONTEXT),
        "livenessProbe": _copy(LIVENESS),
        "readinessProbe": _copy(READINESS),
        "volumeMounts": mounts,
    }


def tmp_volume() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}


def token_volume() -> dict[str, Any]:
    """What automountServiceAccountToken would mount, for the sidecar container only."""
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


def role_rules(deployment: str) -> list[dict[str, Any]]:
    """Exactly the chart's Role (templates/role.yaml) on one Deployment and its Lease."""
    return [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [deployment], "verbs": ["get", "patch"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [f"{deployment}-{SIDECAR}"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def vllm_port(container: MutableMapping[str, Any]) -> int:
    """The port vLLM listens on: its --port (last one wins, as in vLLM), else the container's first declared
    port, else vLLM's default."""
    tokens = _tokens(container)
    port: str | None = None
    for i, token in enumerate(tokens):
        if token == "--port" and i + 1 < len(tokens):
            port = tokens[i + 1]
        elif token.startswith("--port="):
            port = token.split("=", 1)[1]
    if port is not None and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if isinstance(declared, MutableMapping) and isinstance(declared.get("containerPort"), int):
            return int(declared["containerPort"])
    return VLLM_DEFAULT_PORT


def looks_like_vllm(container: MutableMapping[str, Any]) -> bool:
    """A vLLM engine by its image (vllm/vllm-openai, a vllm-cpu build, ...), its name, or how it is started."""
    name = _str(container.get("name"))
    if name == SIDECAR:
        return False
    image = _str(container.get("image")) or ""
    repository = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    if "vllm" in repository.lower() or name == "vllm":
        return True
    return bool(_LAUNCH.search(" ".join(_strings(container))))


def _vllm_container(pod: Doc, kind: str, name: str, wanted: str | None) -> Doc | None:
    containers = [c for c in pod.get("containers") or [] if isinstance(c, MutableMapping)]
    names = ", ".join(_str(c.get("name")) or "?" for c in containers) or "none"
    if wanted is not None:
        for c in containers:
            if c.get("name") == wanted:
                return c
        raise InjectionError(f"{kind} {name} has no container named {wanted!r} (its containers: {names})")
    found = [c for c in containers if looks_like_vllm(c)]
    if len(found) > 1:
        both = " and ".join(repr(_str(c.get("name"))) for c in found)
        raise InjectionError(
            f"{kind} {name} has more than one container that looks like vLLM ({both}): name the one to watch "
            "with --container"
        )
    return found[0] if found else None


def _nothing_found(docs: Sequence[Any], seen: list[str], options: InjectOptions) -> str:
    if options.workload is not None and not seen:
        return f"no workload named {options.workload!r} in the input; check --workload"
    if not seen:
        kinds = sorted({str(d.get("kind")) for d in _objects(docs)}) or ["nothing"]
        return (
            f"the input holds no Deployment or other pod template (it holds: {', '.join(kinds)}); give it the "
            "manifest of the workload that runs vLLM"
        )
    where = "; ".join(seen)
    return (
        f"no vLLM container found (looked in {where}: none runs a vllm image, `vllm serve` or the OpenAI "
        "server module); name it with --container"
    )


def _extras(done: Injected, docs: Sequence[Any], options: InjectOptions) -> Iterator[dict[str, Any]]:
    if not done.acts:
        return
    meta = _meta(own_service_account(done.name), done.namespace, done.name)
    if options.with_rbac:
        if done.service_account == own_service_account(done.name):
            yield {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _copy(meta),
                "automountServiceAccountToken": False,
            }
        yield {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _copy(meta),
            "rules": role_rules(done.name),
        }
        subject: dict[str, Any] = {"kind": "ServiceAccount", "name": done.service_account}
        if done.namespace:
            subject["namespace"] = done.namespace
        yield {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _copy(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
            "subjects": [subject],
        }
    if options.with_service:
        yield _service(done, docs, meta)


def _service(done: Injected, docs: Sequence[Any], meta: dict[str, Any]) -> dict[str, Any]:
    workload = next(d for d in _objects(docs) if d.get("kind") == done.kind and _name(d) == done.name)
    selector = _dig(workload, ("spec", "selector", "matchLabels"))
    if not selector:
        raise InjectionError(
            f"{done.kind} {done.name}: --with-service needs spec.selector.matchLabels to select its pods"
        )
    pod = _dig(workload, POD_SPEC_PATHS[done.kind]) or {}
    vllm = next(c for c in pod["containers"] if c.get("name") == done.vllm_container)
    target: str | int = done.vllm_port
    for declared in vllm.get("ports") or []:
        if declared.get("containerPort") == done.vllm_port and declared.get("name"):
            target = str(declared["name"])
    # A Service name is a DNS label: 63 characters at most (cut as Helm charts cut their names).
    service_meta = {**_copy(meta), "name": meta["name"][:63].rstrip("-")}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": service_meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {str(k): str(v) for k, v in selector.items()},
            "ports": [
                {"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": "tap", "protocol": "TCP"},
                {"name": "metrics", "port": SERVICE_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                {"name": "vllm", "port": SERVICE_VLLM_PORT, "targetPort": target, "protocol": "TCP"},
            ],
        },
    }


def _meta(name: str, namespace: str | None, instance: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {"app.kubernetes.io/name": SIDECAR, "app.kubernetes.io/instance": instance}
    return meta


def _objects(docs: Sequence[Any]) -> Iterator[Doc]:
    """Every object: top-level documents, and the items of a List (kubectl) or ResourceList (kustomize)."""
    for doc in docs:
        if not isinstance(doc, MutableMapping):
            continue
        if doc.get("kind") in LIST_KINDS:
            yield from (item for item in doc.get("items") or [] if isinstance(item, MutableMapping))
        else:
            yield doc


def _upsert(docs: MutableSequence[Any], obj: dict[str, Any]) -> None:
    """Replace the object of the same kind, name and namespace where it stands (a second injection), or add it:
    into the List when the input is one List, else as a new document."""
    key = (obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
    for existing in _objects(docs):
        if (existing.get("kind"), _name(existing), _dig(existing, ("metadata", "namespace"))) == key:
            existing.clear()
            existing.update(obj)
            return
    lists = [d for d in docs if isinstance(d, MutableMapping) and d.get("kind") in LIST_KINDS]
    if len(docs) == 1 and lists:
        _list_at(lists[0], "items").append(obj)
    else:
        docs.append(obj)


def _put_named(items: MutableSequence[Any], obj: dict[str, Any]) -> None:
    """Replace the item with obj's name where it stands, else append it (the engine stays first, as the chart
    has it)."""
    for i, item in enumerate(items):
        if isinstance(item, MutableMapping) and item.get("name") == obj["name"]:
            items[i] = obj
            return
    items.append(obj)


def _drop_named(items: MutableSequence[Any], name: str) -> None:
    for i in reversed(range(len(items))):
        if isinstance(items[i], MutableMapping) and items[i].get("name") == name:
            del items[i]


def _list_at(mapping: MutableMapping[str, Any], key: str) -> MutableSequence[Any]:
    value = mapping.get(key)
    if not isinstance(value, MutableSequence):
        mapping[key] = value = []
    return value


def _dig(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(doc, MutableMapping):
            return None
        doc = doc.get(key)
    return doc


def _name(doc: Doc) -> str:
    return _str(_dig(doc, ("metadata", "name"))) or "(unnamed)"


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _strings(container: MutableMapping[str, Any]) -> list[str]:
    return [str(x) for key in ("command", "args") for x in (container.get(key) or [])]


def _tokens(container: MutableMapping[str, Any]) -> list[str]:
    """command and args as words; a shell script (``sh -c "vllm serve ... --port 8200"``) split as the shell
    would."""
    out: list[str] = []
    for item in _strings(container):
        if any(c.isspace() for c in item):
            try:
                out += shlex.split(item)
            except ValueError:  # unbalanced quotes: words are still good enough to find --port
                out += item.split()
        else:
            out.append(item)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
