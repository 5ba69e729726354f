"""A real Kubernetes control plane on 127.0.0.1, with kwok's fake nodes instead of kubelets.

`running_cluster()` starts etcd, kube-apiserver (RBAC, service-account tokens signed by a key made at start),
kube-controller-manager, kube-scheduler and kwok, registers two fake GPU nodes, waits until the whole thing can
run a Deployment, and stops every process by its PID afterwards. The binaries are the ones
scripts/install-cluster.sh builds from the Go modules under tests/cluster/tools (cached per version).

Everything listens on 127.0.0.1 at free ports; nothing is shared between two clusters, so parallel sessions
(other worktrees, CI jobs) do not meet. Used by the session fixture in tests/cluster/conftest.py and by
`make cluster` (python -m tests.cluster).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-cluster.sh"

# The fake nodes: what the scheduler sees and what kwok matches them by. Two, so a rolling update with maxSurge 1
# has somewhere to put the surge pod. Each test keeps its namespace (and its pods) to the end of the session, and
# every vLLM pod of the chart requests 4 CPUs, 24Gi and a GPU: room for the whole suite's pods, not a real node's.
NODE_NAMES = ("gpu-node-0", "gpu-node-1")
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
NODE_CAPACITY = {"cpu": "512", "memory": "4Ti", "pods": "110", GPU_RESOURCE: "64"}
SERVICE_CIDR = "10.96.0.0/24"
POD_CIDR = "10.244.0.1/24"
# What the controller manager runs: rollouts (deployment, replicaset), service accounts and their tokens, the CA
# bundle every namespace gets, namespace deletion, and the garbage collector, without which deleting a
# Deployment (helm uninstall) would leave its ReplicaSets and Pods behind. No node lifecycle controller: the
# fake nodes send no heartbeats and must not be tainted unreachable.
CONTROLLERS = (
    "deployment",
    "replicaset",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "namespace",
    "garbagecollector",
)
START_TIMEOUT = 120.0


@functools.cache
def binaries() -> dict[str, str]:
    """Where install-cluster.sh put the binaries (it builds them the first time, else returns at once)."""
    return installed(INSTALL_SCRIPT)


def installed(script: Path) -> dict[str, str]:
    """Runs an install script and reads its "name=path" lines; a failure names the script and its last words."""
    done = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise ClusterError(f"{script.name} failed (exit {done.returncode}); its last lines:\n{tail}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the test process dies without stopping us (SIGKILL, a crash), the kernel sends SIGTERM,
    # so no control plane outlives the session that started it.
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to this one PID, SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


@dataclass
class Cluster:
    """A running cluster: its admin kubeconfig, the API server's address and CA, and the binaries it ran."""

    workdir: Path
    server: str
    kubeconfig: Path
    ca_cert: Path
    bin: dict[str, str]
    components: list[Component] = field(default_factory=list)

    @property
    def versions(self) -> str:
        return self.bin.get("versions", "")

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.bin["kubectl"], "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", stdin=text)

    def edit(self, kind: str, name: str, namespace: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Another client's write: read the object, change it, and PUT it back (resourceVersion-guarded).

        Controllers write the status of what a test just changed (the deployment controller while a rollout
        settles, even after `rollout status` is done), so the PUT can meet a newer resourceVersion; like any
        well-behaved client (client-go's RetryOnConflict), read again and retry."""
        for _ in range(10):
            obj: dict[str, Any] = self.get_json(kind, name, "-n", namespace)
            change(obj)
            done = self.kubectl("replace", "-o", "json", "-f", "-", stdin=json.dumps(obj), check=False)
            if done.returncode == 0:
                replaced: dict[str, Any] = json.loads(done.stdout)
                return replaced
            if "Conflict" not in done.stderr:
                raise ClusterError(f"kubectl replace failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            time.sleep(0.2)
        raise ClusterError(f"kubectl replace kept meeting a newer version of {kind} {namespace}/{name}:\n{done.stderr}")

    def token_kubeconfig(self, token: str, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's) instead of the admin cert."""
        path.write_text(json.dumps(_kubeconfig(self.server, self.ca_cert, {"token": token}, namespace)))
        return path


# --- certificates ----------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_key(name: str, cwd: Path) -> None:
    # P-256: quick to make, and every component (TLS, client certs, service-account JWTs as ES256) accepts it.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)


def _signed_cert(name: str, subject: str, extensions: str, cwd: Path) -> None:
    _ec_key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "7", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=cwd,
    )  # fmt: skip


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving cert, an admin client cert (group system:masters), the SA signing key."""
    pki.mkdir(parents=True)
    _ec_key("ca.key", pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=spec-sidecar-test-ca", "-days", "7",
             "-out", "ca.crt", cwd=pki)  # fmt: skip
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
    sans = ",".join(["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", *(f"DNS:{n}" for n in names)])
    _signed_cert("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n", pki)
    _signed_cert("admin", "/O=system:masters/CN=spec-sidecar-admin", "extendedKeyUsage=clientAuth\n", pki)
    _ec_key("sa.key", pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _kubeconfig(server: str, ca: Path, user: dict[str, str], namespace: str = "default") -> dict[str, Any]:
    name = "spec-sidecar-test"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "user", "namespace": namespace}}],
        "current-context": name,
    }


# --- waiting ---------------------------------------------------------------------------------------------------


def _https_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(what: str, ready: Callable[[], bool], components: Sequence[Component], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in components:
            if c.process.poll() is not None:
                raise ClusterError(f"{c.name} exited ({c.process.returncode}) while waiting for {what}:\n{c.tail()}")
        if ready():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {c.name}\n{c.tail()}" for c in components)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


# --- the cluster -----------------------------------------------------------------------------------------------


def _start(name: str, argv: Sequence[str], workdir: Path, components: list[Component]) -> Component:
    log = workdir / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, nothing that could deadlock after fork
        )  # fmt: skip
    component = Component(name, process, log)
    components.append(component)
    return component


def _node(name: str) -> dict[str, Any]:
    key, value = KWOK_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
            },
        },
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
    }


@contextlib.contextmanager
def running_cluster(workdir: Path | None = None, *, keep: bool = False) -> Iterator[Cluster]:
    """Start the control plane and two kwok nodes; stop every process and remove the work dir on exit.

    ``keep`` leaves the work dir (logs, etcd data) in place for a post-mortem.
    """
    bins = binaries()
    made_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="spec-sidecar-cluster-")) if workdir is None else workdir
    components: list[Component] = []
    try:
        cluster = _bring_up(work, bins, components)
        yield cluster
    finally:
        for component in reversed(components):
            component.stop()
        if made_workdir and not keep:
            shutil.rmtree(work, ignore_errors=True)


def _bring_up(work: Path, bins: dict[str, str], components: list[Component]) -> Cluster:
    pki = work / "pki"
    make_pki(pki)
    etcd_port, etcd_peer, api_port, kcm_port, sched_port, kwok_port = (free_port() for _ in range(6))

    _start(
        "etcd",
        [
            bins["etcd"], "--name", "test", "--data-dir", str(work / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{etcd_peer}",
            # A throwaway store: no fsync, so a busy CI disk does not slow every write.
            "--unsafe-no-fsync", "--quota-backend-bytes", str(512 * 1024 * 1024),
        ],
        work,
        components,
    )  # fmt: skip
    wait_until("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), components, START_TIMEOUT)

    server = f"https://127.0.0.1:{api_port}"
    _start(
        "kube-apiserver",
        [
            bins["kube-apiserver"],
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints validation refuses; no pod
            # here talks to the API server through that Service.
            "--endpoint-reconciler-type", "none",
            # It taints every new Node not-ready; the node lifecycle controller would lift the taint once the node
            # is Ready, but that controller is not run (see CONTROLLERS), so the taint would keep pods Pending.
            "--disable-admission-plugins", "TaintNodesByCondition",
            # The front-proxy CA the controller manager and scheduler read from extension-apiserver-authentication
            # (they log an error every 20 s without one). No front proxy exists; the allowed name is nobody's.
            "--requestheader-client-ca-file", str(pki / "ca.crt"),
            "--requestheader-allowed-names", "spec-sidecar-no-front-proxy",
            "--requestheader-username-headers", "X-Remote-User",
            "--requestheader-group-headers", "X-Remote-Group",
            "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
            "--profiling=false",
        ],
        work,
        components,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    wait_until("kube-apiserver", lambda: _https_ok(f"{server}/readyz", context), components, START_TIMEOUT)

    admin = {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(json.dumps(_kubeconfig(server, pki / "ca.crt", admin)))
    cluster = Cluster(work, server, kubeconfig, pki / "ca.crt", bins, components)

    # Their own serving endpoints (/healthz) on 127.0.0.1 with self-signed certs in cert-dir; the admin kubeconfig
    # lets them check callers, and /healthz is always allowed.
    served = ["--authentication-kubeconfig", str(kubeconfig), "--authorization-kubeconfig", str(kubeconfig)]
    _start(
        "kube-controller-manager",
        [
            bins["kube-controller-manager"], "--kubeconfig", str(kubeconfig), *served,
            "--bind-address", "127.0.0.1", "--secure-port", str(kcm_port), "--cert-dir", str(work / "kcm"),
            "--leader-elect=false", "--controllers", ",".join(CONTROLLERS),
            "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "ca.crt"),
        ],
        work,
        components,
    )  # fmt: skip
    _start(
        "kube-scheduler",
        [
            bins["kube-scheduler"], "--kubeconfig", str(kubeconfig), *served,
            "--bind-address", "127.0.0.1", "--secure-port", str(sched_port), "--cert-dir", str(work / "scheduler"),
            "--leader-elect=false",
        ],
        work,
        components,
    )  # fmt: skip
    key, value = KWOK_ANNOTATION
    _start(
        "kwok",
        [
            bins["kwok"], "--kubeconfig", str(kubeconfig), "--config", bins["kwok_stages"],
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", f"{key}={value}",
            "--node-ip", "127.0.0.1", "--cidr", POD_CIDR, "--server-address", f"127.0.0.1:{kwok_port}",
        ],
        work,
        components,
    )  # fmt: skip
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
        wait_until(name, functools.partial(_https_ok, f"https://127.0.0.1:{port}/healthz", insecure), components, 60)

    for node in NODE_NAMES:
        cluster.apply(_node(node))
    wait_until("the kwok nodes to be Ready", lambda: _nodes_ready(cluster), components, 60)
    # The serviceaccount controller has caught up once "default" exists: pods can be admitted from then on.
    wait_until(
        "the default ServiceAccount",
        lambda: cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        components,
        60,
    )
    return cluster


def _nodes_ready(cluster: Cluster) -> bool:
    nodes = cluster.get_json("nodes")["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
    }
    return ready >= set(NODE_NAMES)
