"""Fleet mode measures the fleet's speedup from the fleet's own windows, exports it and decides on it.

The fleet's answers come from a stand-in Prometheus (tests/support/fleet.py): two pods, 1.5 requests running
each, 100 requests per window whose time per output token falls in the 25-50 ms bucket with speculation on and
in the 50-75 ms bucket with it off: 62.5 / 37.5 = 1.667x. The real Prometheus, fed by a sidecar's engine that
the sidecar turns off on a real cluster, is in tests/cluster/test_monitoring_on_cluster.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.adapters.prometheus import FleetResult
from sidecar.control.fleet import FleetSource
from sidecar.core.measured_speedup import decode
from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.settings import Settings
from sidecar.wiring import Sidecar, build_sidecar
from tests.support.fleet import FLEET, SELECTOR, Answers, FakeLease, fake_prometheus, fleet_round
from tests.support.payloads import vllm_payload

TPOT = "vllm:request_time_per_output_token_seconds_bucket"
WINDOW = 60.0
RUNNING = [({"model_name": "m", "pod": "a"}, 1.5), ({"model_name": "m", "pod": "b"}, 1.5)]


def tpot_buckets(bucket: str) -> list[tuple[dict[str, str], float]]:
    """100 requests, all in the bucket whose upper bound is ``bucket``."""
    bounds = ("0.025", "0.05", "0.075", "+Inf")
    upto = bounds.index(bucket)
    return [({"model_name": "m", "le": le}, 100.0 if i >= upto else 0.0) for i, le in enumerate(bounds)]


ON: Answers = {**FLEET, TPOT: tpot_buckets("0.05"), "vllm:num_requests_running": RUNNING}
OFF: Answers = {
    **{k: v for k, v in FLEET.items() if "spec_decode" not in k},
    TPOT: tpot_buckets("0.075"),
    "vllm:num_requests_running": RUNNING,
}
ON_ROUND, OFF_ROUND = fleet_round(fake_prometheus(ON)), fleet_round(fake_prometheus(OFF))


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "prometheus_url": "http://prom:9090",
        "prometheus_selector": SELECTOR,
        "window": WINDOW,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def at(result: FleetResult, taken_at: float) -> FleetResult:
    assert result.snapshot is not None
    return replace(result, snapshot=replace(result.snapshot, taken_at=taken_at))


def feed(source: FleetSource, rounds: list[tuple[FleetResult, float]]) -> None:
    for result, taken_at in rounds:
        assert source.observe(at(result, taken_at)) is not None


def test_the_fleet_measures_its_speedup_from_its_windows_with_speculation_on_and_off() -> None:
    source = FleetSource(settings())
    assert source.measured("m") is None
    # Three windows on, the state change (not a sample: it may mix both states), then two windows off.
    feed(source, [(ON_ROUND, 1000 + WINDOW * i) for i in range(3)])
    feed(source, [(OFF_ROUND, 1180 + WINDOW * i) for i in range(3)])
    measured = source.measured("m")
    assert measured is not None
    assert (measured.on_windows, measured.off_windows) == (3, 2)
    assert measured.speedup == pytest.approx(0.0625 / 0.0375, rel=1e-6)
    assert [b.band for b in measured.bands] == [2]  # 3 requests running in the fleet: the 2-4 band
    assert source.status()["speed_windows"] == {"m": {"on": 3, "off": 2}}


def test_no_fleet_window_is_a_sample_while_the_target_rolls_out_nor_for_a_window_after() -> None:
    source = FleetSource(settings())
    rolling = [True]
    source.settled = lambda: not rolling[0]
    feed(source, [(ON_ROUND, 1000.0), (ON_ROUND, 1060.0)])  # rolling out
    rolling[0] = False
    feed(source, [(ON_ROUND, 1090.0)])  # settled, but the window still holds the rollout
    assert source.status()["speed_windows"] == {}
    feed(source, [(ON_ROUND, 1120.0)])  # a whole window after the rollout
    assert source.status()["speed_windows"] == {"m": {"on": 1, "off": 0}}


def test_a_replica_that_does_not_query_shows_no_fleet_measurement() -> None:
    lease = FakeLease("pod-a")  # another replica leads
    source = FleetSource(settings(), lease)
    feed(source, [(ON_ROUND, 1000 + WINDOW * i) for i in range(3)])
    feed(source, [(OFF_ROUND, 1180 + WINDOW * i) for i in range(3)])
    source.step_down()
    assert source.measured("m") is None  # only the Lease holder's numbers are the fleet's


def exported(sidecar: Sidecar) -> dict[str, float]:
    text = generate_latest(sidecar.registry).decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()) if k != "model_name"): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "measured" in s.name or "effective_draft_cost" in s.name
    }


def test_a_fleet_sidecar_exports_decides_on_and_keeps_the_fleets_measured_speedup(tmp_path: Path) -> None:
    manifest = tmp_path / "llm.yaml"
    manifest.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llm}\nspec: {template: {spec: {containers: "
        '[{name: vllm, image: v, args: ["--model", "m"]}]}}}\n'
    )
    sidecar = build_sidecar(settings(deployment_file=str(manifest)))
    fleet, controller = sidecar.fleet, sidecar.controller
    assert fleet is not None and controller is not None
    # Before the controller has read the target, whether it rolls out is not known: no sample.
    fleet.observe(at(ON_ROUND, 940.0))
    assert fleet.status()["speed_windows"] == {}
    controller.step(None, 940.0)  # its first read: a manifest never rolls out
    # Five windows of each state (the first after the state change is not a sample): the measurement is in force.
    feed(fleet, [(ON_ROUND, 1000 + WINDOW * i) for i in range(5)])
    feed(fleet, [(OFF_ROUND, 1300 + WINDOW * i) for i in range(6)])
    measured = fleet.measured("m")
    assert measured is not None and measured.established
    assert sidecar.measured("m") == measured

    # The pod's own engine: one model "m", its window current; its own latency says nothing about speed.
    for taken_at in (1600.0, 1610.0):
        snapshot, _, _ = parse_payload(vllm_payload("m"), taken_at)
        sidecar.monitor.observe(ScrapeResult("success", snapshot, 0.01), taken_at)
    assert sidecar.monitor.view_measured("m") is None
    metrics = exported(sidecar)
    assert metrics["specdecode_measured_speedup"] == pytest.approx(measured.speedup)
    assert metrics["specdecode_measured_breakeven_in_force"] == 1.0
    assert metrics["specdecode_measured_speedup_windows{speculation=on}"] == 5.0
    assert metrics["specdecode_measured_speedup_windows{speculation=off}"] == 5.0
    assert metrics["specdecode_effective_draft_cost_ratio"] == pytest.approx(measured.draft_cost)

    # The policy judges the fleet against the fleet's break-even, and a toggle keeps the fleet's windows.
    assert controller.breakeven_for is not None and controller.speed_for is not None
    assert controller.breakeven_for("m") == measured.policy_threshold is not None
    kept = decode(controller.speed_for("m"))
    assert kept is not None and kept[0] == "m"
    assert sum(s.speculation for s in kept[1]) == 5 and sum(not s.speculation for s in kept[1]) == 5


def test_a_new_leader_takes_back_the_windows_the_last_toggle_kept() -> None:
    first = FleetSource(settings())
    feed(first, [(ON_ROUND, 1000 + WINDOW * i) for i in range(3)])
    feed(first, [(OFF_ROUND, 1180 + WINDOW * i) for i in range(3)])
    second = FleetSource(settings())
    second.restore_speed(first.keep_speed("m"))
    measured = second.measured("m")
    assert measured is not None and measured.speedup == pytest.approx(0.0625 / 0.0375, rel=1e-3)
