"""``enable | disable | status`` as a real process, through the real client, against the test API server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.core import annotations as ann
from tests.kubeapi.manifests import LIST_ARGS, NAME, NAMESPACE, list_deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api

ROOT = Path(__file__).parents[3]


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def cli(server: KubeAPI, *args: str) -> subprocess.CompletedProcess[str]:
    target = ["--deployment", NAME, "--namespace", NAMESPACE, "--container", "vllm", "--kube-host", server.url]
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", *args, *target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_status_disable_enable_round_trip(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    status = cli(server, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["speculation"] == "on"

    off = cli(server, "disable", "--reason", "incident-42", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["outcome"] == "changed"
    stored = server.deployment(NAMESPACE, NAME)
    assert stored["metadata"]["annotations"][ann.CHANGED_BY] == "manual"
    assert stored["metadata"]["annotations"][ann.REASON] == "incident-42"

    server.complete_rollout(NAMESPACE, NAME)
    after = json.loads(cli(server, "status", "--json").stdout)
    assert (after["speculation"], after["restorable"], after["changed_by"]) == ("off", True, "manual")
    assert after["rollout_watch"].startswith("disable at ")  # a manual write is watched too

    on = cli(server, "enable")
    assert on.returncode == 0 and on.stdout.startswith("changed"), on.stdout + on.stderr
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == LIST_ARGS


def test_disable_twice_is_fine_and_says_unchanged(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    cli(server, "disable")
    again = cli(server, "disable")
    assert again.returncode == 0 and again.stdout.startswith("unchanged")


def test_disable_with_pin_keeps_it_off_and_a_plain_enable_is_refused(server: KubeAPI) -> None:
    server.add_deployment(list_deployment())
    assert cli(server, "disable", "--pin").returncode == 0
    assert server.deployment(NAMESPACE, NAME)["metadata"]["annotations"][ann.PIN] == "off"
    server.complete_rollout(NAMESPACE, NAME)
    refused = cli(server, "enable")
    assert refused.returncode == 1 and refused.stdout.startswith("pinned")
    assert cli(server, "enable", "--unpin").returncode == 0
    assert ann.PIN not in server.deployment(NAMESPACE, NAME)["metadata"]["annotations"]


def test_a_missing_deployment_is_exit_code_2_with_one_line(server: KubeAPI) -> None:
    done = cli(server, "status")
    assert done.returncode == 2
    assert "not found" in done.stderr and "check --deployment and --namespace" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
