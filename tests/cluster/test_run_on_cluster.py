"""`spec-sidecar run` itself against the real cluster, with the chart's ServiceAccount token: the decision loop
sees acceptance fall in the traffic it taps, turns speculation off with one patch the real RBAC allows, the
deployment controller rolls it out on the kwok nodes, and the loop holds and renews the real Lease.

The engine is tests/support/fake_vllm.py (acceptance falls with temperature); the sidecar runs as a process on
this machine, not in the pod (kwok runs no containers), with the token a pod of the chart would mount.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from sidecar.core import annotations as ann
from tests.cluster import chart
from tests.cluster.cluster import Cluster
from tests.support.fake_vllm import fake_vllm
from tests.support.sidecar_process import run_sidecar, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"
POD = "llm-spec-sidecar-7d9f-abcde"


def send(client: httpx.Client, *, temperature: float, count: int) -> None:
    for i in range(count):
        body = {"model": MODEL, "prompt": f"request {i}", "max_tokens": 40, "temperature": temperature}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text


def test_run_with_the_charts_token_disables_speculation_once_rolls_it_out_and_holds_the_lease(
    cluster: Cluster, tmp_path: Path
) -> None:
    namespace = chart.new_namespace(cluster, "run")
    chart.install(cluster, "llm", namespace)
    name = chart.fullname("llm")
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    kubeconfig = cluster.token_kubeconfig(token, tmp_path / "kubeconfig", namespace)
    original = chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace))

    def deployment() -> dict[str, Any]:
        found: dict[str, Any] = cluster.get_json("deployment", name, "-n", namespace)
        return found

    loop = ("--deployment", name, "--namespace", namespace, "--container", "vllm", "--window", "2",
            "--trip-windows", "1", "--warmup-windows", "0", "--scrape-interval", "0.3",
            "--min-draft-tokens", "100")  # fmt: skip
    # The kubernetes client reads KUBECONFIG when it is not in a pod; POD_NAME is the Lease identity, as the
    # chart's downward API sets it.
    env = {"KUBECONFIG": str(kubeconfig), "POD_NAME": POD}
    with fake_vllm() as engine, run_sidecar(tmp_path, "--vllm-url", engine.url, *loop, env=env) as sidecar:
        with httpx.Client(base_url=sidecar.url, timeout=30) as client:

            def disabled() -> bool:
                send(client, temperature=1.0, count=4)  # acceptance far below 0.5
                return "--speculative-config" not in chart.vllm_args(deployment())

            wait_until(disabled, 90, sidecar.log)
        chart.rollout(cluster, namespace, name)
        lease = cluster.get_json("lease", f"{name}-spec-sidecar", "-n", namespace)
        assert lease["spec"]["holderIdentity"] == POD
        # The loop renews every 5 s while it lives.
        wait_until(
            lambda: (
                cluster.get_json("lease", f"{name}-spec-sidecar", "-n", namespace)["spec"]["renewTime"]
                != lease["spec"]["renewTime"]
            ),
            20,
            sidecar.log,
        )
        log = sidecar.log()
    assert "forbidden" not in log.lower(), log[-3000:]

    after = deployment()
    record = ann.from_annotations(after["metadata"]["annotations"])
    assert (record.state, str(record.changed_by), record.reason) == ("off", "sidecar", "low_acceptance")
    assert len(record.history) == 1  # one toggle, not two
    live = [p for p in chart.pods(cluster, namespace, "llm") if chart.ready_on_fake_nodes(p)]
    assert live and all("--speculative-config" not in chart.vllm_args(p) for p in live)
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    assert [e["reason"] for e in json.loads(events)["items"] if e["reason"].startswith("Speculation")] == [
        "SpeculationDisabled"
    ]

    # A human turns it back on with the same token: the chart's args come back byte for byte.
    target = ["--deployment", name, "--namespace", namespace, "--kubeconfig", str(kubeconfig)]
    on = subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", "enable", *target, "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert on.returncode == 0, on.stdout + on.stderr
    chart.rollout(cluster, namespace, name)
    assert chart.vllm_args(deployment()) == original

    # helm uninstall removes all it made; the Lease is the sidecar's, not Helm's, and stays until deleted by hand,
    # as docs/install.md ("Uninstall") says.
    chart.helm(cluster, "uninstall", "llm", "--namespace", namespace, "--wait", "--timeout", "120s")
    cluster.kubectl(
        "wait", "--for=delete", "pods,replicasets", "-l", "app.kubernetes.io/instance=llm", "-n", namespace,
        "--timeout", "60s",
    )  # fmt: skip
    assert chart.leftovers(cluster, namespace) == [f"Lease/{name}-spec-sidecar"]


def test_a_sidecar_killed_right_after_its_patch_and_restarted_converges_from_the_annotations_without_a_second_toggle(
    cluster: Cluster, tmp_path: Path
) -> None:
    namespace = chart.new_namespace(cluster, "kill")
    chart.install(cluster, "llm", namespace)
    name = chart.fullname("llm")
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
    env = {"KUBECONFIG": str(cluster.token_kubeconfig(token, tmp_path / "kubeconfig", namespace)), "POD_NAME": POD}
    loop = ("--deployment", name, "--namespace", namespace, "--container", "vllm", "--window", "2",
            "--trip-windows", "1", "--warmup-windows", "0", "--scrape-interval", "0.3",
            "--min-draft-tokens", "100")  # fmt: skip

    def args() -> list[str]:
        return chart.vllm_args(cluster.get_json("deployment", name, "-n", namespace))

    with fake_vllm() as engine:
        with run_sidecar(tmp_path, "--vllm-url", engine.url, *loop, env=env) as first:
            with httpx.Client(base_url=first.url, timeout=30) as client:

                def disabled() -> bool:
                    send(client, temperature=1.0, count=4)
                    return "--speculative-config" not in args()

                wait_until(disabled, 90, first.log)
            first.process.kill()  # SIGKILL: no lease release, no clean shutdown
            first.process.wait(10)
        # The same pod name comes back (a container restart) to the same low acceptance.
        with run_sidecar(tmp_path, "--vllm-url", engine.url, *loop, env=env) as second:
            with httpx.Client(base_url=second.url, timeout=30) as client:
                for _ in range(10):  # several 2 s windows of traffic that would trip the rule again
                    send(client, temperature=1.0, count=4)
                    time.sleep(1)
            # It read its state back from the Deployment: speculation is off, and it knows so.
            wait_until(lambda: "speculation</dt><dd>off" in httpx.get(second.url + "/status").text, 10, second.log)
            log = second.log()
    chart.rollout(cluster, namespace, name)
    after = cluster.get_json("deployment", name, "-n", namespace)
    record = ann.from_annotations(after["metadata"]["annotations"])
    assert record.state == "off" and len(record.history) == 1, record
    # One toggle (the history above), so at most one Event: the kill can land between the patch and the Event it
    # posts next (it did at load average 15), and the restarted sidecar, which toggles nothing, posts none.
    reasons = [e["reason"] for e in cluster.get_json("events", "-n", namespace)["items"]]
    assert reasons.count("SpeculationDisabled") <= 1 and "SpeculationEnabled" not in reasons, reasons
    assert "--speculative-config" not in args()
    assert "forbidden" not in log.lower(), log[-3000:]
