"""A small HTTP server with the Kubernetes API server's semantics for exactly what the sidecar uses.

Deployments: GET; PATCH with ``application/json-patch+json`` applied by the ``jsonpatch`` library (a failed
``test`` op or a bad path is 422; any other patch type is 415, so the adapter cannot silently rely on strategic
merge); PUT with a stale resourceVersion is 409. Every change bumps resourceVersion; a spec change bumps
generation and leaves the rollout incomplete until the test completes it. Leases: GET/POST/PUT with 409 on
conflict. Events: POST (and GET list, for assertions). Faults (any status, slowness) are injected per route.

Runs in a thread on 127.0.0.1 with a free port; ``stop()`` (or leaving the context) shuts it down.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import jsonpatch

JSON_PATCH = "application/json-patch+json"
Obj = dict[str, Any]

DEPLOYMENT = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)$")
LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases$")
LEASE = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")

REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason or REASONS.get(code, "Unknown")

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int | None = None  # None: no error, only the delay
    times: int = 1
    delay: float = 0.0
    after_apply: bool = False  # apply the request, then answer with the fault (a lost response)


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str | None
    status: int
    body: Any


@dataclass
class KubeAPI:
    # The real server also bumps the generation when only a Deployment's annotations change (docs/testing.md).
    annotations_bump_generation: ClassVar[bool] = False
    deployments: dict[tuple[str, str], Obj] = field(default_factory=dict)
    leases: dict[tuple[str, str], Obj] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(100))
    _server: ThreadingHTTPServer | None = None

    # --- test controls -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_deployment(self, manifest: Obj, *, rollout_complete: bool = True) -> Obj:
        obj = copy.deepcopy(manifest)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        with self.lock:
            self.deployments[(meta["namespace"], meta["name"])] = obj
            if rollout_complete:
                self.complete_rollout(meta["namespace"], meta["name"])
        return obj

    def deployment(self, namespace: str, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self.deployments[(namespace, name)])

    def complete_rollout(self, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.deployments[(namespace, name)]
            replicas = obj.get("spec", {}).get("replicas", 1)
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }

    def edit(self, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        """Another client's write: change the stored Deployment; it gets a new resourceVersion (and generation,
        if its spec changed). tests/cluster/real_kubeapi.py does the same on the real server."""
        with self.lock:
            obj = self.deployments[(namespace, name)]
            spec = copy.deepcopy(obj.get("spec"))
            change(obj)
            obj["metadata"]["resourceVersion"] = self._next_version()
            if obj.get("spec") != spec:
                obj["metadata"]["generation"] += 1
            return copy.deepcopy(obj)

    @contextmanager
    def no_room_for_new_pods(self) -> Iterator[None]:
        """While inside: a rollout's new pods cannot become ready. Here rollouts finish only when a test says so
        (``complete_rollout``), so there is nothing to do; tests/cluster/real_kubeapi.py cordons the nodes."""
        yield

    def inject(self, method: str, path: str, status: int | None = None, **kwargs: Any) -> Fault:
        fault = Fault(method.upper(), re.compile(path), status, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def applied_patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH" and r.status == 200]

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> KubeAPI:
        api = self

        class Handler(_Handler):
            state = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kubeapi", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- semantics ---------------------------------------------------------------------------------------

    def _next_version(self) -> str:
        return str(next(self._versions))

    def handle(self, method: str, path: str, content_type: str | None, body: Any) -> tuple[int, Obj]:
        if m := DEPLOYMENT.match(path):
            key = (m["ns"], m["name"])
            if method == "GET":
                return 200, self._get(self.deployments, key, "deployments")
            if method == "PATCH":
                return 200, self._patch_deployment(key, content_type, body)
            if method == "PUT":
                return 200, self._put(self.deployments, key, body, "deployments", spec_generation=True)
        if (m := LEASES.match(path)) and method == "POST":
            _validate_lease(body)
            return 201, self._create(self.leases, m["ns"], body, "leases")
        if m := LEASE.match(path):
            key = (m["ns"], m["name"])
            if method == "GET":
                return 200, self._get(self.leases, key, "leases")
            if method == "PUT":
                _validate_lease(body)
                return 200, self._put(self.leases, key, body, "leases", spec_generation=False)
        if m := EVENTS.match(path):
            if method == "POST":
                return 201, self._create_event(m["ns"], body)
            if method == "GET":
                items = [e for e in self.events if e["metadata"]["namespace"] == m["ns"]]
                return 200, {"kind": "EventList", "apiVersion": "v1", "items": copy.deepcopy(items)}
        raise ApiError(404, f"no route for {method} {path}")

    def _get(self, store: dict[tuple[str, str], Obj], key: tuple[str, str], kind: str) -> Obj:
        if key not in store:
            raise ApiError(404, f'{kind} "{key[1]}" not found')
        return copy.deepcopy(store[key])

    def _patch_deployment(self, key: tuple[str, str], content_type: str | None, body: Any) -> Obj:
        if content_type != JSON_PATCH:
            raise ApiError(415, f"the test server implements only {JSON_PATCH}, not {content_type}")
        current = self._get(self.deployments, key, "deployments")
        try:
            patched = jsonpatch.apply_patch(current, body)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise ApiError(422, f"the server rejected our request due to an error in our request: {exc}") from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, f"invalid JSON patch: {exc}") from exc
        _validate_deployment(patched)
        return self._store_change(self.deployments, key, current, patched, spec_generation=True)

    def _put(
        self, store: dict[tuple[str, str], Obj], key: tuple[str, str], body: Obj, kind: str, *, spec_generation: bool
    ) -> Obj:
        current = self._get(store, key, kind)
        sent = body.get("metadata", {}).get("resourceVersion")
        if sent != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {kind} "{key[1]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        updated = copy.deepcopy(body)
        for immutable in ("uid", "generation", "namespace", "name", "creationTimestamp"):
            if immutable in current["metadata"]:
                updated["metadata"][immutable] = current["metadata"][immutable]
        if "status" in current:
            updated["status"] = current["status"]
        return self._store_change(store, key, current, updated, spec_generation=spec_generation)

    def _store_change(
        self, store: dict[tuple[str, str], Obj], key: tuple[str, str], before: Obj, after: Obj, *, spec_generation: bool
    ) -> Obj:
        after["metadata"]["resourceVersion"] = before["metadata"]["resourceVersion"]  # clients cannot set it
        if after == before:
            return after  # a no-op write does not bump resourceVersion
        if spec_generation and after.get("spec") != before.get("spec"):
            after["metadata"]["generation"] = before["metadata"]["generation"] + 1
        after["metadata"]["resourceVersion"] = self._next_version()
        store[key] = after
        return copy.deepcopy(after)

    def _create(self, store: dict[tuple[str, str], Obj], namespace: str, body: Obj, kind: str) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        key = (namespace, meta.get("name", ""))
        if not key[1]:
            raise ApiError(422, "metadata.name: Required value")
        if key in store:
            raise ApiError(409, f'{kind} "{key[1]}" already exists', "AlreadyExists")
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_version()
        store[key] = obj
        return copy.deepcopy(obj)

    def _create_event(self, namespace: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name"):
            meta["name"] = meta.get("generateName", "event.") + uuid.uuid4().hex[:10]
        if not obj.get("involvedObject", {}).get("name"):
            raise ApiError(422, "involvedObject.name: Required value")
        meta["resourceVersion"] = self._next_version()
        self.events.append(obj)
        return copy.deepcopy(obj)

    def fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    return fault
        return None


# A Lease's acquireTime and renewTime are MicroTime: the real server parses them with six fraction digits.
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


def _validate_lease(obj: Obj) -> None:
    for name in ("acquireTime", "renewTime"):
        value = (obj.get("spec") or {}).get(name)
        if value is not None and not MICRO_TIME.fullmatch(str(value)):
            raise ApiError(400, f"Lease cannot be handled: parsing time {value!r} needs six fraction digits")


def _validate_deployment(obj: Obj) -> None:
    containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise ApiError(422, "spec.template.spec.containers: Required value")
    for i, container in enumerate(containers):
        for name in ("command", "args"):
            value = container.get(name)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ApiError(422, f"spec.template.spec.containers[{i}].{name}: must be a list of strings")


class _Handler(BaseHTTPRequestHandler):
    state: KubeAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        method, path = self.command, self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        api = self.state
        fault = api.fault_for(method, path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        try:
            if fault is not None and fault.status is not None and not fault.after_apply:
                raise ApiError(fault.status, f"injected {fault.status}")
            body = json.loads(raw) if raw else None
            with api.lock:
                status, payload = api.handle(method, path, content_type, body)
            if fault is not None and fault.status is not None:
                raise ApiError(fault.status, f"injected {fault.status} after applying")
        except ApiError as err:
            status, payload = err.code, err.status()
        except json.JSONDecodeError:
            status, payload = 400, ApiError(400, "body is not JSON").status()
        with api.lock:
            api.requests.append(Recorded(method, path, content_type, status, json.loads(raw) if raw else None))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_PUT = do_POST = _serve  # noqa: N815 - BaseHTTPRequestHandler's naming


@contextmanager
def kube_api() -> Iterator[KubeAPI]:
    api = KubeAPI().start()
    try:
        yield api
    finally:
        api.stop()
