"""The adapter tests of tests/integration/ (the Kubernetes actuator, the Lease, the CLI, the records that hold no
secrets) run unchanged on the real kube-apiserver: the same test functions, handed tests/cluster/real_kubeapi.py
instead of the test API server.

Every test in those modules is listed here: either it runs on both servers, or it stays with the test server
because it needs a fault a real server cannot be made to give (a 500, a timeout, a lost response, a delay held
open between a read and a write), and the reason says which. Conflicts and races that the test server stages
with an injected delay are shown on the real server by tests/cluster/test_races_on_cluster.py instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.real_kubeapi import RealKubeAPI, real_kube_api
from tests.integration.adapters import test_kube_actuator as actuator
from tests.integration.adapters import test_kube_lease as lease
from tests.integration.adapters import test_kube_reduce_k as reduce_k
from tests.integration.adapters import test_kube_rollout_watch as rollout
from tests.integration.adapters import test_kube_schedule_k as schedule_k
from tests.integration.adapters import test_records_hold_no_secrets as secrets
from tests.integration.cli import test_kube_cli as cli

MODULES = (actuator, lease, cli, secrets, rollout, reduce_k, schedule_k)
INJECTED = "injects a fault a real server cannot give"
RACE = "holds a write open with an injected delay; the real-server race is in test_races_on_cluster.py"
FAKE_ONLY: dict[str, str] = {
    "test_a_concurrent_write_fails_the_test_op_and_an_automatic_decision_is_not_retried": RACE,
    "test_a_manual_toggle_re_reads_after_a_conflict_and_applies_on_the_fresh_object": RACE,
    "test_transient_errors_are_retried_with_backoff_and_counted": INJECTED + " (500, 503, 429)",
    "test_retries_give_up_without_a_half_done_change": INJECTED + " (503 on every try)",
    "test_forbidden_is_not_retried": INJECTED + " (403 on a PATCH; the real RBAC 403s are in "
    "test_sidecar_rbac_on_cluster.py)",
    "test_a_slow_answer_times_out_and_is_retried": INJECTED + " (a slow answer)",
    "test_a_lost_response_to_an_applied_patch_is_recognised_as_our_own_write": INJECTED + " (a lost response)",
    "test_an_event_that_cannot_be_posted_is_counted_and_the_toggle_stands": INJECTED + " (403 on one Event)",
    "test_an_unreachable_api_server_is_retried_counted_and_reported": "stops the API server",
    "test_rollout_is_complete_only_when_every_replica_is_updated_and_ready": "a pure function on status dicts",
    "test_a_generation_the_sidecars_own_annotation_write_made_is_no_rollout": "a pure function on status dicts (the "
    "real server's lag is held open in test_annotation_writes_on_cluster.py)",
    "test_a_concurrent_write_fails_the_records_test_op_and_the_pass_goes_back_to_the_policy": RACE,
    "test_the_controller_re_reads_after_a_409_and_records_the_pass_on_the_next_window": INJECTED + " (409)",
    "test_a_lease_server_error_means_not_leader_and_no_patch": INJECTED + " (500 on the Lease)",
    "test_without_a_lease_the_guarded_patch_still_lets_only_one_racer_write": RACE,
    "test_the_controller_disables_a_manifest_without_writing_or_logging_the_key": "a manifest, no API server",
    "test_the_next_sidecar_rewrites_an_older_sidecars_record_in_a_manifest_once_and_enable_restores_the_args": (
        "a manifest, no API server"
    ),
}


def module_tests(module: ModuleType) -> list[Callable[..., Any]]:
    return [f for name, f in vars(module).items() if name.startswith("test_") and inspect.isfunction(f)]


ON_BOTH = [f for m in MODULES for f in module_tests(m) if f.__name__ not in FAKE_ONLY]


@pytest.fixture(scope="module")
def proxied(cluster: Cluster) -> Iterator[RealKubeAPI]:
    with real_kube_api(cluster) as api:
        yield api


@pytest.fixture
def real(proxied: RealKubeAPI) -> RealKubeAPI:
    proxied.reset()
    return proxied


def test_every_adapter_test_runs_on_the_real_server_or_says_why_not() -> None:
    names = {f.__name__ for m in MODULES for f in module_tests(m)}
    assert set(FAKE_ONLY) <= names, set(FAKE_ONLY) - names  # no stale entry
    assert len(ON_BOTH) + len(FAKE_ONLY) == len(names)


@pytest.mark.parametrize("test", ON_BOTH, ids=lambda f: f"{f.__module__.rsplit('.', 1)[-1]}.{f.__name__}")
def test_on_the_real_server(test: Callable[..., Any], real: RealKubeAPI, request: pytest.FixtureRequest) -> None:
    wanted = inspect.signature(test).parameters
    extra = {name: request.getfixturevalue(name) for name in wanted if name != "server"}
    test(server=real, **extra)
