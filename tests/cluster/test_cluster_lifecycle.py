"""The cluster harness itself: a second, private cluster starts beside the session's, and stopping it ends every
process it started and removes its work dir (nothing is left for the next session or the next worktree)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cluster.cluster import NODE_NAMES, Cluster, running_cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; its /proc state says it is dead.
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def test_a_second_cluster_runs_beside_the_first_and_stopping_it_leaves_no_process_and_no_directory(
    cluster: Cluster,
) -> None:
    with running_cluster() as other:
        assert other.server != cluster.server
        pids = [c.process.pid for c in other.components]
        assert [c.name for c in other.components] == [
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
        ]  # fmt: skip
        assert all(_alive(pid) for pid in pids)
        names = {n["metadata"]["name"] for n in other.get_json("nodes")["items"]}
        assert names == set(NODE_NAMES)
        # Separate stores: a namespace made in one is not in the other.
        other.kubectl("create", "namespace", "only-in-the-second")
        assert cluster.kubectl("get", "namespace", "only-in-the-second", check=False).returncode != 0
        workdir = other.workdir
    assert not any(_alive(pid) for pid in pids)
    assert not workdir.exists()
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
