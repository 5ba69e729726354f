"""The real kube-apiserver behind the test API server's interface, so the adapter tests run on both unchanged.

tests/integration/adapters/test_kube_*.py drive the sidecar's Kubernetes client against tests/kubeapi/server.py and then
look at what it stored (`deployment()`, `events`, `leases`) and what it was sent (`requests`,
`applied_patches()`). `RealKubeAPI` answers the same calls from the session's real cluster:

- `url` is a recording proxy on 127.0.0.1 (plain HTTP, like the test server's) that forwards every request to
  the real API server with the admin client certificate and records method, path, content type, body and status.
  The client under test sends exactly what it would send to the test server; nothing is changed on the way.
- `add_deployment` creates the object in the tests' namespace and, unless told otherwise, waits until the
  deployment controller has rolled it out on the kwok nodes; `complete_rollout` waits for the next one.
- `edit` is another client's write (get, change, update), where the test server's tests change its store.

What a real server cannot be made to do (answer 500, time out, drop a response) stays with the test server.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.adapters.kube.actuator import COMPONENT
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.kubeapi.server import Recorded

Obj = dict[str, Any]
# Where the adapter tests put their objects: the namespace named in tests/kubeapi/manifests.py.
NAMESPACES = ("serving", "default")
# A nodeSelector no kwok node matches: the pods stay Pending and the rollout never completes.
NOWHERE = {"spec-sidecar.test/nowhere": "true"}


class _Leases(Mapping[tuple[str, str], Obj]):
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def __getitem__(self, key: tuple[str, str]) -> Obj:
        namespace, name = key
        found: Obj = self._cluster.get_json("lease", name, "-n", namespace)
        return found

    def __iter__(self) -> Iterator[tuple[str, str]]:
        items = self._cluster.get_json("leases", "-A")["items"]
        return iter([(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items])

    def __len__(self) -> int:
        return len(list(iter(self)))


class RealKubeAPI:
    """The test API server's interface (tests/kubeapi/server.KubeAPI) on the session's real cluster."""

    # The real server bumps a Deployment's generation when only its annotations change (it copies them to the
    # ReplicaSets); the test server does not. docs/testing.md lists the differences.
    annotations_bump_generation = True

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.requests: list[Recorded] = []
        self.leases = _Leases(cluster)
        self._server: ThreadingHTTPServer | None = None

    # --- the test server's interface ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_deployment(self, manifest: Obj, *, rollout_complete: bool = True) -> Obj:
        obj = copy.deepcopy(manifest)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        if not rollout_complete:
            obj["spec"]["template"]["spec"]["nodeSelector"] = NOWHERE
        self.cluster.kubectl("create", "-f", "-", stdin=json.dumps(obj))
        if rollout_complete:
            self.complete_rollout(meta["namespace"], meta["name"])
        return self.deployment(meta["namespace"], meta["name"])

    def deployment(self, namespace: str, name: str) -> Obj:
        found: Obj = self.cluster.get_json("deployment", name, "-n", namespace)
        return found

    def complete_rollout(self, namespace: str, name: str) -> None:
        chart.rollout(self.cluster, namespace, name)

    def applied_patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH" and r.status == 200]

    @property
    def events(self) -> list[Obj]:
        """The sidecar's Events in the tests' namespaces, in the order the server stored them. (The test server
        holds only what clients post; here the controllers' own ScalingReplicaSet, Scheduled... are left out.)"""
        found = [e for ns in NAMESPACES for e in self.cluster.get_json("events", "-n", ns)["items"]]
        ours = [e for e in found if (e.get("source") or {}).get("component") == COMPONENT]
        return sorted(ours, key=lambda e: int(e["metadata"]["resourceVersion"]))

    @contextlib.contextmanager
    def no_room_for_new_pods(self) -> Iterator[None]:
        """While inside, every node is cordoned: a rollout's new pods stay Pending and never become ready (as on
        a cluster without a free GPU for the surge pod), while the running ones keep running. Uncordoned after."""
        nodes = [n["metadata"]["name"] for n in self.cluster.get_json("nodes")["items"]]
        try:
            for node in nodes:
                self.cluster.kubectl("cordon", node)
            yield
        finally:
            for node in nodes:
                self.cluster.kubectl("uncordon", node)

    def inject(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError("a real API server cannot be made to fail on demand: keep this test on the fake")

    # --- what the test server's tests do to its store directly --------------------------------------------

    def edit(self, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        """Another client's write to the Deployment (read, change, PUT; retried on a conflict)."""
        return self.cluster.edit("deployment", name, namespace, change)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Nothing left from the last test: no Deployment (nor its ReplicaSets and Pods), Event or Lease."""
        for namespace in NAMESPACES:
            # The garbage collector removes the old ReplicaSets and Pods in the background; a new Deployment of
            # the same name has a new uid, so it neither adopts them nor counts them in its rollout.
            self.cluster.kubectl("delete", "deployments,leases,events", "--all", "-n", namespace, "--wait=false")
        self.requests.clear()

    def start(self) -> RealKubeAPI:
        for namespace in NAMESPACES:
            if self.cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
                self.cluster.kubectl("create", "namespace", namespace)
        self.reset()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _admin_context(cluster: Cluster) -> ssl.SSLContext:
    pki = Path(cluster.ca_cert).parent
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def _handler(api: RealKubeAPI) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(api.cluster.server)
    context = _admin_context(api.cluster)
    local = threading.local()

    def connection() -> http.client.HTTPSConnection:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPSConnection(
                upstream.hostname or "127.0.0.1", upstream.port, context=context, timeout=60
            )
        conn: http.client.HTTPSConnection = local.connection
        return conn

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            try:
                conn = connection()
                conn.request(self.command, self.path, body=raw or None, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException):
                local.connection = None  # a stale keep-alive connection: once more on a fresh one
                conn = connection()
                conn.request(self.command, self.path, body=raw or None, headers=headers)
                response = conn.getresponse()
            body = response.read()
            content_type = self.headers.get("Content-Type")
            try:
                parsed: Any = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw
            api.requests.append(Recorded(self.command, self.path.split("?")[0], content_type, response.status, parsed))
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815 - BaseHTTPRequestHandler naming

    return Forward


@contextlib.contextmanager
def real_kube_api(cluster: Cluster) -> Iterator[RealKubeAPI]:
    api = RealKubeAPI(cluster).start()
    try:
        yield api
    finally:
        api.stop()
