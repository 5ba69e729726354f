"""The bounds behind a big scrape, one by one: parse cost of escaped labels, pieces, series, label bytes, models,
trend points. The real sidecar against hostile engines is in tests/integration/scrape/test_scrape_bounds.py."""

from __future__ import annotations

import tracemalloc

import pytest

from sidecar.core import exposition
from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import ParseLimits, SampleParser, text_chunks
from sidecar.scrape.fetch import ScrapeBounds, ScrapeResult, parse_payload
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings
from tests.support.hostile_engine import histogram_body, many_models_body
from tests.support.payloads import vllm_payload

WANTED = wanted_sample_names()


def parser() -> SampleParser:
    return SampleParser(WANTED, openmetrics_aliases(WANTED))


def test_an_escaped_label_value_costs_memory_in_proportion_to_its_length_not_160_times_it() -> None:
    value = 'ab\\"' * 500_000  # 2 MB, an escape every 4 characters
    text = f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="{value}"}} 1\n'
    tracemalloc.start()
    try:
        (sample,) = parser().parse(text).samples
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sample.label("model_name") == 'ab"' * 500_000
    # The text, the label text and the value the regex hands out, and the unescaped copies: a few bytes a
    # character. The regex's backtracking records alone were about 160 bytes a character, re.sub's pieces 20.
    assert peak < 10 * len(text), peak / len(text)


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_pieces_of_a_body_end_after_newlines_and_decode_to_the_whole_text(size: int) -> None:
    text = "é½€😀 line\n" * 50 + "no newline at the end"
    for body in (text, text.encode()):  # bytes are cut by bytes, text by characters
        pieces = list(text_chunks(body, size))
        assert "".join(pieces) == text
        assert all(p.endswith("\n") for p in pieces[:-1])


def test_parsing_in_small_pieces_gives_the_samples_of_parsing_at_once() -> None:
    body = histogram_body(200_000)
    whole = parser().parse(body)
    pieces = list(text_chunks(body, 1000))
    assert len(pieces) > 100
    assert parser()._parse(pieces, exposition.NO_LIMITS) == whole
    assert len(whole.samples) > 2000


def test_a_parse_over_max_samples_keeps_nothing_and_counts_every_wanted_line() -> None:
    body = histogram_body(1_000_000)
    assert len(list(text_chunks(body))) > 2  # past the first piece, lines are only counted
    everything = parser().parse(body)
    for limit in (100, len(everything.samples) - 1):
        over = parser().parse(body, ParseLimits(max_samples=limit))
        assert over.samples == ()
        assert over.dropped == {"series": len(everything.samples)}
    at = parser().parse(body, ParseLimits(max_samples=len(everything.samples)))
    assert at.samples == everything.samples and not at.dropped


def test_a_line_whose_label_text_is_over_max_label_bytes_is_dropped_and_counted_alone() -> None:
    long_name = "m" * 300
    text = vllm_payload("tiny", 1, 4, 3) + vllm_payload(long_name, 1, 4, 3)
    parsed = parser().parse(text, ParseLimits(max_label_bytes=200))
    assert {s.label("model_name") for s in parsed.samples} == {"tiny"}
    assert parsed.dropped == {"label_bytes": 7}  # running; drafts, draft tokens, accepted: _total and _created
    assert parsed.bad_lines == 0


def test_a_snapshot_keeps_the_first_max_models_by_name_and_counts_the_others() -> None:
    snapshot, _, _ = parse_payload(many_models_body(1, models=30), 0.0, ScrapeBounds(max_models=5))
    assert list(snapshot.models) == ["model-0", "model-1", "model-10", "model-11", "model-12"]
    assert snapshot.dropped_models == 25


def test_the_trend_keeps_at_most_trend_max_points_and_counts_what_it_dropped() -> None:
    monitor = Monitor(Settings(trend_max_points=25, window=1000))
    for i in range(10):
        snapshot, _, _ = parse_payload(many_models_body(i + 1, models=4), float(i))
        monitor.observe(ScrapeResult("success", snapshot, 0.01), float(i))
    trend = monitor.trend()
    assert len(trend) == 25
    assert trend[-1].at == 9.0 and trend[0].at > 0.0  # the oldest went first
    assert monitor.view.dropped == {"trend_points": 40 - 25}


def test_dropped_lines_of_successive_scrapes_add_up_in_the_view() -> None:
    monitor = Monitor(Settings())
    for i in range(3):
        result = ScrapeResult("success", parse_payload(vllm_payload(), float(i))[0], 0.01, dropped={"label_bytes": 2})
        monitor.observe(result, float(i))
    monitor.observe(ScrapeResult("too_many_series", None, 0.01, dropped={"series": 30_000}), 3.0)
    assert monitor.view.dropped == {"label_bytes": 6, "series": 30_000}
