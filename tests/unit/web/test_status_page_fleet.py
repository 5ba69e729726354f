"""/status in fleet mode: the fleet's numbers (what the controller decides on) beside the pod's, clearly labelled;
on a replica that does not hold the Lease, who does instead of numbers."""

from __future__ import annotations

import asyncio
import re

import httpx

from sidecar.adapters.prometheus import FleetQuery, query_fleet
from sidecar.core.verdict import Verdict
from sidecar.settings import Settings
from sidecar.web.status_data import collect
from sidecar.web.status_page import FleetPanel, render_status
from sidecar.wiring import build_sidecar
from tests.support.fleet import FLEET, SELECTOR, FakeLease, fake_prometheus
from tests.support.stats_builders import model
from tests.support.status_pages import EVIL, page

FLEET_MODEL = model(model_name="tiny", acceptance_ratio=0.123, verdict=Verdict.DISABLE)


def panel(**changes: object) -> FleetPanel:
    fields: dict[str, object] = {
        "source": 'http://prom:9090 {namespace="ml"}',
        "querying": True,
        "lease_holder": None,
        "last_result": "success",
        "last_detail": "",
        "window_seconds": 60.0,
        "models": (FLEET_MODEL,),
        "baseline": {"tiny": {"tpot": 2.5, "e2e": None}},
        "pod_baseline": {"tiny": {"tpot": 1.75, "e2e": None}},
        **changes,
    }
    return FleetPanel(**fields)  # type: ignore[arg-type]


def fleet_rows(html: str) -> dict[str, tuple[str, str]]:
    """The fleet table's rows: label -> (fleet cell, pod cell), tags stripped."""
    table = re.search(r'<table class="fleet">(.*?)</table>', html, re.S)
    assert table is not None, "no fleet table"
    rows = {}
    for row in re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td></tr>", table.group(1)):
        label, fleet, pod = (re.sub(r"<[^>]+>", "", cell) for cell in row)
        rows[label] = (fleet, pod)
    return rows


def test_the_fleets_numbers_stand_beside_the_pods_in_labelled_columns() -> None:
    pod = model(model_name="tiny", acceptance_ratio=0.8)
    html = render_status(page(models=(pod,), fleet=panel()))
    assert "Fleet: what the controller decides on" in html
    assert "<th>fleet (decides)</th><th>this pod</th>" in html
    rows = fleet_rows(html)
    assert rows["acceptance ratio"] == ("0.123", "0.800")
    assert rows["verdict"] == ("disable", pod.verdict.value)
    assert rows["TPOT P99/P50 (baseline)"][0].endswith("(2.50)")  # the fleet's baseline for the fleet
    assert rows["TPOT P99/P50 (baseline)"][1].endswith("(1.75)")  # the pod's for the pod
    assert "over 60 s" in html
    # The pod's own verdict cards say they are not what is decided on.
    assert "This pod's engine (not what the controller decides on)" in html
    assert "<h2>Verdict</h2>" not in html


def test_without_fleet_mode_there_is_no_fleet_section_and_the_verdict_title_is_unchanged() -> None:
    html = render_status(page())
    assert "Fleet" not in html and "<h2>Verdict</h2>" in html


def test_a_replica_without_the_lease_names_the_holder_and_shows_no_fleet_numbers() -> None:
    html = render_status(page(fleet=panel(querying=False, lease_holder="llm-6d5f-k2x4p", models=())))
    assert "does not hold the Lease" in html and "llm-6d5f-k2x4p" in html
    assert '<table class="fleet">' not in html


def test_a_failed_round_says_why_there_are_no_fleet_numbers() -> None:
    html = render_status(page(fleet=panel(models=(), last_result="unreachable", last_detail="refused")))
    assert "No fleet numbers (the last round: unreachable refused): nothing is decided." in html


def test_the_lease_holder_and_the_selector_are_escaped() -> None:
    html = render_status(page(fleet=panel(querying=False, lease_holder=EVIL, source=EVIL, models=())))
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") == 2


def test_collect_builds_the_fleet_panel_from_a_running_fleet_source() -> None:
    settings = Settings(prometheus_url="http://prom:9090", prometheus_selector=SELECTOR, window=60)
    sidecar = build_sidecar(settings)
    assert sidecar.fleet is not None

    async def round_() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake_prometheus(FLEET))) as client:
            query = FleetQuery("http://prom:9090", SELECTOR, 60, 1)
            sidecar.fleet.observe(await query_fleet(client, query, 1000.0))  # type: ignore[union-attr]

    asyncio.run(round_())
    built = collect(sidecar, recorder=None, decisions=lambda: (), actuator_state=lambda: None, now=1001.0)
    assert built.fleet is not None and built.fleet.querying
    assert [m.acceptance_ratio for m in built.fleet.models] == [0.4]
    assert built.fleet.window_seconds == 60
    assert SELECTOR in built.fleet.source
    html = render_status(built)
    assert fleet_rows(html)["acceptance ratio"] == ("0.400", "—")  # the pod has no scrape yet

    sidecar.fleet.elect_by(FakeLease("someone-else"))
    sidecar.fleet.step_down()
    built = collect(sidecar, recorder=None, decisions=lambda: (), actuator_state=lambda: None, now=1002.0)
    assert built.fleet is not None and not built.fleet.querying and built.fleet.models == ()
    assert built.fleet.lease_holder == "someone-else"
