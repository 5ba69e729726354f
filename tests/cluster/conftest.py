"""The session's real cluster (tests/cluster/cluster.py), started on first use and stopped at the end.

Every test that uses `cluster` is marked `cluster` (deselect with `-m "not cluster"`) and runs after the rest of
the suite. The first session on a machine builds the binaries (scripts/install-cluster.sh, and
scripts/install-monitoring.sh for the monitoring tests; cached per version), or waits for the build `make test`
started in the background; later ones start in seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster, ClusterError, binaries, running_cluster
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
            # Under pytest-xdist (`make test`: --dist loadgroup) one worker runs all of them: one cluster is started.
            item.add_marker(pytest.mark.xdist_group("cluster"))


class _ClusterTestsLast:
    """Cluster tests run after every other test (engine tests included), the monitoring ones last of all: a fresh
    machine's Go builds, which `make test` starts in the background, then overlap the rest of the suite."""

    @pytest.hookimpl(trylast=True)  # after the root conftest has put the engine tests last
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items.sort(key=_cluster_rank)


def _cluster_rank(item: pytest.Item) -> int:
    names = getattr(item, "fixturenames", ())
    return 2 if "monitoring_stack" in names else 1 if "cluster" in names else 0


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_ClusterTestsLast(), "cluster-tests-last")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outside pytest-timeout's wrapper: the wait is not timed
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    # A cold build takes far longer than a test's timeout (pytest-timeout counts fixture setup): before the first
    # test that needs them, build the binaries, or wait for the build `make test` started (the install scripts
    # hold a lock per cache key), or find them cached. Both calls are cached: later tests pass straight through.
    # A failed build is not raised here (a hook's error stops the whole session, engine tests included): the
    # test's own fixture asks again and fails with the script's last lines.
    names = getattr(item, "fixturenames", ())
    with contextlib.suppress(ClusterError):
        if "cluster" in names:
            binaries()
        if "monitoring_stack" in names:
            monitoring_binaries()
    yield
