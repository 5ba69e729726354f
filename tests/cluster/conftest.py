"""The session's real cluster (tests/cluster/cluster.py), started on first use and stopped at the end.

Every test that uses `cluster` is marked `cluster` (deselect with `-m "not cluster"`). The first session on a
machine builds the binaries (scripts/install-cluster.sh, cached per version); later ones start in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster, binaries, running_cluster
from tests.cluster.monitoring import monitoring_binaries


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as running:
        yield running


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    # A cold build takes far longer than a test's timeout (pytest-timeout counts fixture setup): build, or find the
    # cached build, once collection is done and only if a selected test needs the cluster.
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        binaries()
    # The same for the monitoring stack (the Prometheus Operator, Prometheus, Alertmanager), a build of its own.
    if any("monitoring_stack" in getattr(item, "fixturenames", ()) for item in session.items):
        monitoring_binaries()
