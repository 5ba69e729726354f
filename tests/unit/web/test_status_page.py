"""The /status page as pure rendering: what it shows, what it escapes, and that it needs nothing from outside."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from sidecar.control.loop import DecisionRecord
from sidecar.core.advice import AdviceConfig, advise
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.request_acceptance import SpecCounts
from sidecar.core.verdict import Thresholds
from sidecar.scrape.monitor import TrendPoint
from sidecar.tap.recorder import RequestRecord, TapRecorder
from sidecar.web.status_data import bucket_rows
from sidecar.web.status_page import ActuatorState, Health, acceptance_chart, render_status
from tests.support.stats_builders import model
from tests.support.status_pages import EVIL, NOW, page

SVG = "{http://www.w3.org/2000/svg}"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_the_page_loads_nothing_from_outside() -> None:
    tags = parse(render_status(page(trend=_trend([0.7, 0.8]))))
    names = {tag for tag, _ in tags.tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed"}
    for _tag, attrs in tags.tags:
        assert "src" not in attrs
        assert not (attrs.get("href") or "").startswith(("http", "//"))
    assert "url(" not in render_status(page())
    assert "svg" in names and "style" in names


def test_the_page_refreshes_itself() -> None:
    metas = [a for t, a in parse(render_status(page())).tags if t == "meta" and a.get("http-equiv") == "refresh"]
    assert metas and metas[0]["content"] == "10"


def test_user_controlled_text_is_escaped_everywhere() -> None:
    m = model(model_name=EVIL)
    html = render_status(
        page(
            models=(m,),
            advice=(advise(m, [], AdviceConfig()),),
            trend=_trend([0.6], model_name=EVIL),
            buckets=bucket_rows([_summary(EVIL, EVIL)], Thresholds()),
            actuator=ActuatorState(EVIL, True, EVIL, EVIL),
            decisions=(DecisionRecord(NOW, EVIL, EVIL, EVIL),),
            health=Health(EVIL, False, "unreachable", EVIL, None),
        )
    )
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;") >= 8


def test_verdict_and_recommendation_per_model_are_shown() -> None:
    text = " ".join(parse(render_status(page())).text)
    assert "keep" in text  # the model's verdict (acceptance 0.75)
    assert "disable for some traffic" in text  # the framework sees the hot bucket below 0.5
    assert "0.750" in text


def test_actuator_absent_says_not_configured() -> None:
    assert "actuator: not configured" in render_status(page(actuator=None))


def test_actuator_state_is_shown_when_configured() -> None:
    html = render_status(page(actuator=ActuatorState("deployment default/vllm", False, "off", "disabled at 10:02")))
    assert "deployment default/vllm" in html and "disabled at 10:02" in html
    assert "actuator: not configured" not in html


def test_decision_history_lists_newest_first_with_utc_times() -> None:
    decisions = (
        DecisionRecord(NOW - 7200, "disable", "low_acceptance", "3 windows below 0.5"),
        DecisionRecord(NOW - 60, "enable", "trial", "timed trial"),
    )
    html = render_status(page(decisions=decisions))
    assert html.index("timed trial") < html.index("3 windows below 0.5")
    assert "2027-01-15 07:59:00" in html and "2027-01-15 06:00:00" in html  # NOW is 08:00:00 UTC


def test_empty_decision_history_says_so() -> None:
    assert "No decisions yet." in render_status(page())


def test_missing_tap_and_empty_tap_read_differently() -> None:
    assert "not running in this sidecar" in render_status(page(buckets=None))
    assert "No requests through the tap yet." in render_status(page(buckets=()))


def test_chart_draws_threshold_lines_at_their_values() -> None:
    svg = ET.fromstring(acceptance_chart(_trend([0.7]), Thresholds(disable_below=0.5, keep_from=0.65), NOW))
    frame = svg.find(f"{SVG}rect")
    assert frame is not None
    top, height = float(frame.get("y", "nan")), float(frame.get("height", "nan"))
    lines = [el for el in svg.iter(f"{SVG}line") if el.get("class") == "threshold"]
    ys = sorted(float(el.get("y1", "nan")) for el in lines)
    assert ys == pytest.approx(sorted([top + (1 - 0.65) * height, top + (1 - 0.5) * height]), abs=0.1)


def test_chart_line_follows_the_values_and_breaks_at_unknowns() -> None:
    svg = ET.fromstring(acceptance_chart(_trend([0.2, 0.4, None, 0.9, 1.0]), Thresholds(), NOW))
    frame = svg.find(f"{SVG}rect")
    assert frame is not None
    top, height = float(frame.get("y", "nan")), float(frame.get("height", "nan"))
    polylines = [el for el in svg.iter(f"{SVG}polyline") if el.get("class") == "series"]
    assert len(polylines) == 2  # a gap, not a drop to zero
    values = [
        [1 - (float(point.split(",")[1]) - top) / height for point in line.get("points", "").split()]
        for line in polylines
    ]
    assert values == [pytest.approx([0.2, 0.4], abs=0.01), pytest.approx([0.9, 1.0], abs=0.01)]


def test_chart_without_data_says_so() -> None:
    assert "no acceptance measured in the last hour" in acceptance_chart((), Thresholds(), NOW)


def test_bucket_rows_from_the_real_tap_recorder_carry_shares_and_verdicts() -> None:
    recorder = TapRecorder(window_seconds=300, clock=lambda: NOW)
    for _ in range(30):
        recorder.record(RequestRecord("tiny", "0", "per_request_metrics", SpecCounts(40, 32)))
    for _ in range(10):
        recorder.record(RequestRecord("tiny", "[1,+Inf)", "per_request_metrics", SpecCounts(40, 8)))
    rows = {r.bucket: r for r in bucket_rows(recorder.bucket_summary(), Thresholds())}
    assert rows["0"].share == pytest.approx(0.75) and rows["[1,+Inf)"].share == pytest.approx(0.25)
    assert rows["0"].acceptance == pytest.approx(0.8) and rows["0"].verdict == "keep"
    assert rows["[1,+Inf)"].acceptance == pytest.approx(0.2) and rows["[1,+Inf)"].verdict == "disable"
    html = render_status(page(buckets=tuple(rows.values())))
    assert re.search(r"\[1,\+Inf\)</td><td class=\"num\">10</td><td class=\"num\">25%", html)


def test_a_bucket_with_too_few_draft_tokens_has_no_verdict() -> None:
    recorder = TapRecorder(window_seconds=300, clock=lambda: NOW)
    recorder.record(RequestRecord("tiny", "0", "per_request_metrics", SpecCounts(40, 4)))
    (row,) = bucket_rows(recorder.bucket_summary(), Thresholds())
    assert row.verdict == "no-data"


def _trend(values: list[float | None], model_name: str = "tiny") -> tuple[TrendPoint, ...]:
    return tuple(
        TrendPoint(NOW - 600 + 60 * i, model_name, v, None if v is None else 1 + 4 * v, "keep")
        for i, v in enumerate(values)
    )


def _summary(model_name: str, label: str) -> object:
    recorder = TapRecorder(window_seconds=300, clock=lambda: NOW)
    recorder.record(RequestRecord(model_name, label, "per_request_metrics", SpecCounts(10, 5)))
    return recorder.bucket_summary()[0]


def test_chart_spans_what_the_sidecar_has_seen_up_to_an_hour() -> None:
    young = ET.fromstring(acceptance_chart(_trend([0.5] * 11), Thresholds(), NOW))  # 10 minutes of points
    frame = young.find(f"{SVG}rect")
    assert frame is not None
    left, width = float(frame.get("x", "nan")), float(frame.get("width", "nan"))
    (line,) = [el for el in young.iter(f"{SVG}polyline") if el.get("class") == "series"]
    xs = [float(p.split(",")[0]) for p in line.get("points", "").split()]
    assert xs[0] == pytest.approx(left, abs=0.1) and xs[-1] == pytest.approx(left + width, abs=0.1)
    labels = [t.text for t in young.iter(f"{SVG}text")]
    assert "-10 min" in labels and "now" in labels
    old = (TrendPoint(NOW - 7200, "tiny", 0.5, 3.0, "keep"), TrendPoint(NOW, "tiny", 0.5, 3.0, "keep"))
    labels = [t.text for t in ET.fromstring(acceptance_chart(old, Thresholds(), NOW)).iter(f"{SVG}text")]
    assert "-60 min" in labels and "-120 min" not in labels


def test_the_right_sized_k_is_shown_with_where_its_cost_comes_from() -> None:
    cost = DraftCost(0.16, CostSource.ASSUMED, "a draft model")
    m = model(model_name="tiny", position_acceptance=(0.5, 0.25, 0.125, 0.0625), drafts=5000.0, draft_cost=cost)
    text = " ".join(" ".join(parse(render_status(page(models=(m,)))).text).split())
    assert "right-sized K" in text
    assert "K = 2 would give expected speedup 1.33" in text
    assert "c = 0.16, assumed" in text


def test_the_load_schedule_is_shown_with_each_bands_speedup_and_its_source() -> None:
    from sidecar.core.load_schedule import propose_schedule
    from tests.unit.core.test_load_schedule import windows

    plan = propose_schedule(windows(1, 1.6) + windows(6, 0.7), k=4, max_num_seqs=64)
    text = " ".join(" ".join(parse(render_status(page(schedules={"tiny": plan}))).text).split())
    assert "load schedule K = 4 up to batch size 1, 0 above (measured)" in text
    assert "batch size 1 pays: speedup 1.60, 95 %" in text
    assert "batch size 5-8 hurts: speedup 0.70" in text
