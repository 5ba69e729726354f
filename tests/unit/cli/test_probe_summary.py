"""The probe's pure part: which acceptance source a temperature's row uses, and its medians."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from sidecar.cli.probe import (
    SOURCE_METRICS_DELTA,
    SOURCE_NONE,
    SOURCE_PER_REQUEST,
    RequestResult,
    api_base,
    render,
    summarize,
)
from sidecar.core.request_acceptance import SpecCounts
from sidecar.core.verdict import Thresholds, Verdict

T = Thresholds(min_draft_tokens=10)


def result(draft: int | None, accepted: int = 0, ttft: float | None = 0.1, tpot: float | None = 0.01) -> RequestResult:
    return RequestResult(ttft, tpot, 20, None if draft is None else SpecCounts(draft, accepted))


def test_per_request_counts_are_summed_when_every_request_has_them() -> None:
    row = summarize(0.0, [result(40, 30), result(40, 20)], (999.0, 1.0), T)
    assert (row.source, row.draft_tokens, row.accepted_tokens) == (SOURCE_PER_REQUEST, 80, 50)
    assert row.acceptance_ratio == pytest.approx(50 / 80)
    assert row.verdict is Verdict.BORDERLINE


def test_one_request_without_counts_makes_the_whole_temperature_use_the_metrics_delta() -> None:
    row = summarize(1.0, [result(40, 30), result(None)], (100.0, 20.0), T)
    assert (row.source, row.draft_tokens, row.accepted_tokens) == (SOURCE_METRICS_DELTA, 100.0, 20.0)
    assert row.verdict is Verdict.DISABLE


def test_no_counts_anywhere_is_no_data_not_zero() -> None:
    row = summarize(0.4, [result(None), result(None)], (None, None), T)
    assert row.source == SOURCE_NONE
    assert (row.draft_tokens, row.accepted_tokens, row.acceptance_ratio) == (None, None, None)
    assert row.verdict is Verdict.NO_DATA


def test_zero_draft_tokens_have_no_ratio() -> None:
    row = summarize(0.0, [result(0, 0)], None, T)
    assert row.acceptance_ratio is None and row.verdict is Verdict.NO_DATA


def test_latencies_are_medians_of_the_known_values() -> None:
    rows = [result(40, 30, ttft=t, tpot=p) for t, p in ((0.3, 0.02), (0.1, None), (0.2, 0.04), (None, 0.03))]
    row = summarize(0.0, rows, None, T)
    assert row.ttft_seconds == pytest.approx(0.2) and row.tpot_seconds == pytest.approx(0.03)


def test_json_row_has_exactly_the_documented_keys() -> None:
    keys = set(summarize(0.0, [result(40, 30)], None, T).as_json())
    expected = {"temperature", "requests", "draft_tokens", "accepted_tokens", "acceptance_ratio"}
    assert keys == expected | {"ttft_seconds", "tpot_seconds", "verdict"}


@pytest.mark.parametrize(
    ("url", "base"),
    [("http://h:8000", "http://h:8000"), ("http://h:8000/", "http://h:8000"), ("http://h:8000/v1/", "http://h:8000")],
)
def test_the_url_may_be_given_with_or_without_v1(url: str, base: str) -> None:
    assert api_base(url) == base


def test_the_table_prints_the_servers_model_name_as_text_not_as_markup() -> None:
    out = io.StringIO()
    name = "[/]m[bold]x[/bold]\x1b]0;title\x07"
    render(name, "http://e", [summarize(0.0, [result(40, 30)], (None, None), T)], Console(file=out, width=200))
    assert "[/]m[bold]x[/bold]\\x1b]0;title\\x07" in out.getvalue()
    assert "\x1b" not in out.getvalue()
