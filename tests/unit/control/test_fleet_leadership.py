"""Fleet mode's loop with and without a Lease, and the fleet's own P99/P50 baseline.

The loop runs for real (asyncio, short intervals) against a fake Prometheus (httpx.MockTransport) that counts
the queries it answers, and a fake Lease whose holder the test moves. The real Prometheus and the real Lease are
in tests/integration/control/test_fleet_prometheus.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from sidecar.adapters.prometheus import FleetResult
from sidecar.control import fleet as fleet_module
from sidecar.control.fleet import FleetCollector, FleetSource
from sidecar.settings import Settings
from sidecar.wiring import build_sidecar
from tests.support.fleet import FLEET, SELECTOR, Answers, FakeLease, fake_prometheus, fleet_round

TPOT = "vllm:request_time_per_output_token_seconds_bucket"


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "prometheus_url": "http://prom:9090",
        "prometheus_selector": SELECTOR,
        "window": 60,
        "scrape_interval": 0.1,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


class Counting:
    def __init__(self) -> None:
        self.handler = fake_prometheus(FLEET)
        self.queries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.queries += 1
        return self.handler(request)


async def running(source: FleetSource, prometheus: Counting, body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.MockTransport(prometheus)) as client:
        task = asyncio.create_task(source.run(client, stop))
        try:
            await body()
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


async def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds it took for check() to hold; fails after timeout."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def querying(source: FleetSource) -> float:
    (family,) = [f for f in FleetCollector(source).collect() if f.name == "specdecode_fleet_querying"]
    return float(family.samples[0].value)


def test_a_replica_that_does_not_hold_the_lease_asks_prometheus_nothing_and_shows_no_fleet_numbers() -> None:
    lease, prometheus = FakeLease("pod-a"), Counting()
    source = FleetSource(settings(), lease)

    async def body() -> None:
        await until(lambda: lease.campaigns >= 3, 5)

    asyncio.run(running(source, prometheus, body))
    assert prometheus.queries == 0
    assert querying(source) == 0.0
    status = source.status()
    assert (status["querying"], status["lease_holder"], status["stats"]) == (False, "pod-a", None)
    assert sum(status["queries"].values()) == 0


def test_the_replica_that_gets_the_lease_queries_at_once_and_drops_its_numbers_when_it_loses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_module, "POLL_SECONDS", 0.05)
    source, prometheus, lease = FleetSource(settings(scrape_interval=30)), Counting(), FakeLease("pod-a")
    source.elect_by(lease)

    async def body() -> None:
        await until(lambda: lease.campaigns >= 2, 5)
        assert prometheus.queries == 0
        lease.holder = None  # pod-a went away and released the Lease; pod-b takes it at its next look
        took = await until(lambda: source.stats is not None, 5)
        assert took < 1.0  # at once, not a 30 s scrape interval later
        assert source.querying and querying(source) == 1.0
        asked = prometheus.queries
        lease.holder = "pod-c"  # the Lease moved on (pod-b stalled past its expiry)
        await until(lambda: not source.querying, 5)
        assert source.stats is None and source.last is None and source.status()["stats"] is None
        await asyncio.sleep(0.3)
        assert prometheus.queries == asked

    asyncio.run(running(source, prometheus, body))


def test_the_leader_queries_once_per_interval_however_often_it_looks_at_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_module, "POLL_SECONDS", 0.02)
    source, prometheus, lease = FleetSource(settings(scrape_interval=0.4)), Counting(), FakeLease(None)
    source.elect_by(lease)

    async def body() -> None:
        await asyncio.sleep(1.0)

    asyncio.run(running(source, prometheus, body))
    rounds = source.results["success"]
    assert 2 <= rounds <= 4, rounds  # at 0, 0.4, 0.8 s
    assert lease.campaigns > 3 * rounds


def test_without_a_lease_the_one_sidecar_queries_every_interval() -> None:
    source, prometheus = FleetSource(settings(scrape_interval=0.1)), Counting()
    assert source.querying and querying(source) == 1.0

    async def body() -> None:
        await until(lambda: source.results["success"] >= 3, 5)

    asyncio.run(running(source, prometheus, body))
    assert source.status()["lease_holder"] is None and source.status()["elected"] is False


def test_a_lease_that_cannot_be_read_means_no_queries_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fleet_module, "POLL_SECONDS", 0.02)

    class Broken(FakeLease):
        def campaign(self, now: float) -> bool:
            self.campaigns += 1
            raise OSError("API server unreachable")

    source, prometheus, lease = FleetSource(settings()), Counting(), Broken(None)
    source.elect_by(lease)

    async def body() -> None:
        await until(lambda: lease.campaigns >= 3, 5)

    asyncio.run(running(source, prometheus, body))
    assert prometheus.queries == 0 and not source.querying
    assert [r.getMessage() for r in caplog.records if "Lease" in r.getMessage()] == [
        "cannot campaign for the Lease: OSError: API server unreachable"
    ]


# --- the fleet's baseline ------------------------------------------------------------------------------------

# The fleet without speculation (no spec-decode series), with a TPOT histogram of 100 requests: P99/P50 = 4.
TPOT_BUCKETS = [({"model_name": "m", "le": le}, float(v)) for le, v in (("0.01", 60), ("0.05", 98), ("+Inf", 100))]
OFF: Answers = {**{k: v for k, v in FLEET.items() if "spec_decode" not in k}, TPOT: TPOT_BUCKETS}
# The same fleet with speculation on and a much wider tail.
WIDE = [({"model_name": "m", "le": le}, float(v)) for le, v in (("0.01", 51), ("0.5", 99), ("+Inf", 100))]
ON: Answers = {**FLEET, TPOT: WIDE}


def at(result: FleetResult, taken_at: float) -> FleetResult:
    assert result.snapshot is not None
    return replace(result, snapshot=replace(result.snapshot, taken_at=taken_at))


def test_the_fleet_learns_its_baseline_from_windows_without_speculation_only() -> None:
    source = FleetSource(settings(window=60))
    off = source.observe(at(fleet_round(fake_prometheus(OFF)), 1000.0))
    assert off is not None and not off.models[0].speculation
    learned = source.baseline_ratios("m")["tpot"]
    assert learned is not None and learned == pytest.approx(off.models[0].p99_p50_ratio["tpot"])
    on = source.observe(at(fleet_round(fake_prometheus(ON)), 2000.0))
    assert on is not None and on.models[0].speculation
    assert (on.models[0].p99_p50_ratio["tpot"] or 0.0) > 3 * learned  # the wide tail is not learned
    assert source.baseline_ratios("m")["tpot"] == learned
    assert source.status()["baseline_p99_p50"]["m"]["tpot"] == learned


def test_a_configured_baseline_wins_over_the_fleets_learned_one() -> None:
    source = FleetSource(settings(baseline_p99_p50={"tpot": 7.5}))
    source.observe(at(fleet_round(fake_prometheus(OFF)), 1000.0))
    assert source.baseline_ratios("m")["tpot"] == 7.5


def test_in_fleet_mode_the_controller_judges_divergence_against_the_fleets_baseline_not_the_pods(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "llm.yaml"
    manifest.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llm}\nspec: {template: {spec: {containers: "
        '[{name: vllm, image: v, args: ["--model", "m"]}]}}}\n'
    )
    sidecar = build_sidecar(settings(deployment_file=str(manifest)))
    assert sidecar.fleet is not None and sidecar.controller is not None
    assert sidecar.fleet.leadership is None  # a manifest has no Lease: this sidecar queries
    assert sidecar.controller.baseline_for is not None
    assert sidecar.controller.baseline_for("m")["tpot"] is None
    sidecar.fleet.observe(at(fleet_round(fake_prometheus(OFF)), 1000.0))
    assert sidecar.controller.baseline_for("m")["tpot"] == sidecar.fleet.baseline_ratios("m")["tpot"]
    assert sidecar.controller.baseline_for("m")["tpot"] is not None
    assert sidecar.monitor.view.baseline.ratio("m", "tpot") is None  # the pod learned nothing
