"""Numbers no engine can produce make the window invalid: no ratio, no verdict, no decision; resets stay resets.

From exposition text through parse → snapshot → window → stats, then the policy, the Monitor and the exporter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.control.fleet import FLEET_CONSISTENCY_SLACK
from sidecar.core.policy import Action, PolicyConfig, PolicyState, Reason, decide, observation_from_stats
from sidecar.core.report import report_json
from sidecar.core.stats import AnalysisConfig, ModelStats
from sidecar.core.verdict import Verdict
from sidecar.scrape.collector import ScrapeCollector
from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.scrape.monitor import Monitor, View
from sidecar.settings import Settings
from tests.support.exposition_text import Engine, only_model, stats_of, v1_text

GOOD = Engine(drafts=100, draft_tokens=400, accepted=200, per_position=(80, 60, 40, 20))


def later(e: Engine, n: int = 2, **changes: Any) -> Engine:
    """The same engine n times further on (every count multiplied), with some values overridden."""
    grown = replace(
        e,
        drafts=e.drafts * n,
        draft_tokens=e.draft_tokens * n,
        accepted=e.accepted * n,
        per_position=tuple(p * n for p in e.per_position),
    )
    return replace(grown, **changes)


def assert_invalid(model: ModelStats, reason: str) -> None:
    assert model.invalid == reason, model.invalid_detail
    assert model.verdict is Verdict.INVALID
    assert model.invalid_detail
    numbers = (
        model.acceptance_ratio,
        model.mean_acceptance_length,
        model.alpha_estimate,
        model.draft_tokens,
        model.accepted_tokens,
        model.expected_speedup,
    )
    assert numbers == (None,) * len(numbers)
    assert model.position_acceptance == () and model.latency == {}


# --- what makes a window invalid ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"accepted": -37_000}, "negative"),
        ({"accepted": math.nan}, "not_finite"),
        ({"draft_tokens": math.inf}, "not_finite"),
        ({"drafts": -math.inf}, "not_finite"),
        ({"per_position": (160, 120, -1, 40)}, "negative"),
        ({"accepted": 4000}, "accepted_exceeds_drafted"),  # 4000 accepted of 800 drafted, at one scrape
        ({"drafts": 900}, "drafts_exceed_draft_tokens"),
        ({"per_position": (300, 120, 80, 40)}, "position_exceeds_drafts"),  # 300 at position 0 of 200 drafts
    ],
)
def test_a_scrape_no_engine_can_write_makes_the_window_invalid(bad: dict[str, Any], reason: str) -> None:
    model = only_model(stats_of(v1_text(GOOD), v1_text(later(GOOD, **bad))))
    assert_invalid(model, reason)


def test_a_bad_scrape_at_the_start_of_the_window_makes_it_invalid_too() -> None:
    bad = replace(GOOD, accepted=-5)
    model = only_model(stats_of(v1_text(bad), v1_text(later(GOOD)), v1_text(later(GOOD, 3))))
    assert_invalid(model, "negative")


def test_increases_with_more_accepted_than_drafted_are_invalid_though_each_scrape_is_possible() -> None:
    # Each scrape alone keeps accepted <= drafted; between them 700 were accepted of 400 drafted.
    after = later(GOOD, accepted=900)
    model = only_model(stats_of(v1_text(GOOD), v1_text(after)))
    assert_invalid(model, "accepted_exceeds_drafted")


@pytest.mark.parametrize(
    ("buckets", "count", "reason"),
    [
        ((("0.1", 5), ("1.0", 3), ("+Inf", 9)), 9, "histogram_not_monotonic"),
        ((("0.1", 5), ("1.0", 7), ("+Inf", 9)), 12, "histogram_count_mismatch"),
        ((("0.1", 5), ("1.0", math.nan), ("+Inf", 9)), 9, "not_finite"),
    ],
)
def test_a_histogram_that_is_not_cumulative_or_miscounted_makes_the_window_invalid(
    buckets: tuple[tuple[str, float], ...], count: float, reason: str
) -> None:
    labels = 'engine="0",model_name="tiny"'
    hist = [f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {c}' for le, c in buckets]
    hist.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {count}")
    text = v1_text(later(GOOD)) + "\n".join(hist) + "\n"
    assert_invalid(only_model(stats_of(v1_text(GOOD), text)), reason)


def test_a_cumulative_histogram_with_a_matching_count_is_valid() -> None:
    labels = 'engine="0",model_name="tiny"'
    text = (
        v1_text(later(GOOD))
        + f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 5\n'
        + f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} 9\n'
        + f"vllm:time_to_first_token_seconds_count{{{labels}}} 9\n"
    )
    model = only_model(stats_of(v1_text(GOOD), text))
    assert model.invalid is None and model.verdict is Verdict.BORDERLINE  # 200 of 400: 0.5
    assert model.latency["ttft"].p50 is not None


def test_an_infinite_acceptance_gauge_of_a_gauge_only_engine_is_invalid() -> None:
    text = 'sglang:spec_accept_rate{model_name="m"} +Inf\nsglang:generation_tokens_total{model_name="m"} 1000\n'
    model = only_model(stats_of(text, text.replace("1000", "2000")))
    assert_invalid(model, "gauge_out_of_range")


def test_consistent_numbers_near_the_edges_are_valid() -> None:
    # Every draft token accepted and every draft full: the largest numbers an engine can write.
    perfect = Engine(drafts=100, draft_tokens=400, accepted=400, per_position=(100, 100, 100, 100))
    model = only_model(stats_of(v1_text(perfect), v1_text(later(perfect))))
    assert model.invalid is None
    assert model.acceptance_ratio == 1.0 and model.verdict is Verdict.KEEP


def test_fleet_increases_may_exceed_by_the_extrapolation_slack_but_no_more() -> None:
    slack = AnalysisConfig(consistency_slack=FLEET_CONSISTENCY_SLACK)
    little = later(GOOD, accepted=200 + 420)  # 420 accepted of 400 drafted in the window: 5 % over
    assert only_model(stats_of(v1_text(GOOD), v1_text(little), config=slack)).invalid is None
    assert only_model(stats_of(v1_text(GOOD), v1_text(little))).invalid == "accepted_exceeds_drafted"
    much = later(GOOD, accepted=200 + 600, draft_tokens=800)
    assert only_model(stats_of(v1_text(GOOD), v1_text(much), config=slack)).invalid == "accepted_exceeds_drafted"


# --- resets are resets ---------------------------------------------------------------------------------------


def test_a_restart_with_a_new_created_time_counts_from_zero_and_is_valid() -> None:
    before = later(GOOD, 5)
    restarted = replace(GOOD, created=1_700_000_900.0)  # lower values, new _created: vLLM after a restart
    model = only_model(stats_of(v1_text(before), v1_text(restarted)))
    assert model.invalid is None
    assert model.draft_tokens == 400 and model.acceptance_ratio == 200 / 400


def test_a_new_created_time_is_a_restart_even_when_a_counter_came_back_higher() -> None:
    before = Engine(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6))
    restarted = replace(GOOD, created=1_700_000_900.0)
    model = only_model(stats_of(v1_text(before), v1_text(restarted)))
    assert model.invalid is None and model.draft_tokens == 400


def test_one_counter_down_with_the_same_created_time_is_bad_not_a_reset() -> None:
    after = later(GOOD, accepted=150)  # accepted went 200 -> 150 while _created stayed: no restart did that
    assert_invalid(only_model(stats_of(v1_text(GOOD), v1_text(after))), "counter_decreased")


def without_created(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "_created" not in line) + "\n"


def test_without_created_times_all_counters_down_together_is_a_reset() -> None:
    before, after = without_created(v1_text(later(GOOD, 5))), without_created(v1_text(GOOD))
    model = only_model(stats_of(before, after))
    assert model.invalid is None and model.draft_tokens == 400 and model.acceptance_ratio == 0.5


def test_without_created_times_a_counter_that_was_zero_may_rise_across_a_restart() -> None:
    before = replace(later(GOOD, 5), per_position=(400, 300, 200, 0))  # nothing accepted at position 3 yet
    after = replace(GOOD, per_position=(80, 60, 40, 20))
    model = only_model(stats_of(without_created(v1_text(before)), without_created(v1_text(after))))
    assert model.invalid is None and model.draft_tokens == 400


def test_without_created_times_one_counter_down_while_others_rise_is_bad() -> None:
    before, after = without_created(v1_text(GOOD)), without_created(v1_text(later(GOOD, accepted=150)))
    assert_invalid(only_model(stats_of(before, after)), "counter_decreased")


def test_the_window_sums_increases_across_a_restart_of_the_whole_series() -> None:
    # 400 drafted, 200 accepted before the restart; then 400 and 300 from zero; the window holds both.
    restarted = replace(GOOD, accepted=300, per_position=(90, 80, 70, 60), created=1_700_000_900.0)
    model = only_model(stats_of(v1_text(GOOD), v1_text(later(GOOD)), v1_text(restarted)))
    assert model.invalid is None
    assert model.draft_tokens == 800 and model.accepted_tokens == 500


# --- nothing acts on an invalid window --------------------------------------------------------------------------


def invalid_model(accepted: float = -37_000) -> ModelStats:
    return only_model(stats_of(v1_text(GOOD), v1_text(later(GOOD, accepted=accepted))))


@pytest.mark.parametrize("accepted", [-37_000, math.nan, math.inf, 5_000])
def test_the_policy_holds_on_an_invalid_window_even_when_one_more_failing_window_would_disable(
    accepted: float,
) -> None:
    config = PolicyConfig(window_seconds=10, min_draft_tokens=100, trip_windows=3)
    tripping = PolicyState(speculation=True, trip_count=2, trip_reason=Reason.LOW_ACCEPTANCE)
    obs = observation_from_stats(invalid_model(accepted), engine_up=True, window_seconds=10)
    decision = decide(obs, tripping, config, now=1_000.0)
    assert decision.action is Action.NONE and decision.reason is Reason.INVALID_WINDOW
    assert decision.state.trip_count == 2  # neither counted nor reset: like no data
    assert "impossible" in decision.detail


def test_report_json_says_invalid_with_the_reason_and_no_number() -> None:
    body = report_json(stats_of(v1_text(GOOD), v1_text(later(GOOD, accepted=-37_000))))
    (model,) = body["models"]
    assert model["verdict"] == "invalid"
    assert model["invalid"]["reason"] == "negative" and "-37000" in model["invalid"]["detail"]
    assert model["acceptance_ratio"] is None and model["window"]["draft_tokens"] is None


def scrape(text: str, at: float) -> ScrapeResult:
    snapshot, bad, _ = parse_payload(text, at)
    assert bad == 0
    return ScrapeResult("success", snapshot, 0.01)


def exported(view: View) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(lambda: view, stale_after=1e9))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_monitor_counts_invalid_windows_logs_the_episode_once_and_exports_no_ratio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = Monitor(Settings(window=30, min_draft_tokens=100))
    bad = v1_text(later(GOOD, 2, accepted=-37_000))
    with caplog.at_level(logging.INFO, logger="spec_sidecar.runtime"):
        monitor.observe(scrape(v1_text(GOOD), 0), 0)
        views = [monitor.observe(scrape(bad, t), t) for t in (10, 20, 30, 40)]
        clean = [monitor.observe(scrape(v1_text(later(GOOD, n)), t), t) for n, t in ((3, 50), (4, 60), (6, 80))]
    assert [v.stats.models[0].verdict for v in views] == [Verdict.INVALID] * 4  # type: ignore[union-attr]
    # The window keeps the newest scrape at or before its start: the last bad one (t=40) is gone at t=80.
    assert clean[-1].stats is not None and clean[-1].stats.models[0].acceptance_ratio == 0.5
    invalid_logs = [r for r in caplog.records if "is invalid" in r.getMessage()]
    assert len(invalid_logs) == 1 and "negative" in invalid_logs[0].getMessage()
    assert sum("valid again" in r.getMessage() for r in caplog.records) == 1
    counted = clean[-1].invalid_windows["negative"]
    assert counted == 4 + sum(v.stats.models[0].invalid is not None for v in clean[:-1])  # type: ignore[union-attr]
    metrics = exported(views[-1])
    assert "specdecode_acceptance_ratio" not in metrics and "specdecode_window_draft_tokens" not in metrics
    assert metrics["specdecode_speculation_enabled"] == {(("model_name", "tiny"),): 1.0}
    assert metrics["specdecode_invalid_windows_total"][(("reason", "negative"),)] == 4.0
    assert metrics["specdecode_invalid_windows_total"][(("reason", "not_finite"),)] == 0.0


def test_the_monitor_counts_each_engine_restart_once() -> None:
    monitor = Monitor(Settings(window=600))
    first = Engine(drafts=100, draft_tokens=400, accepted=200, per_position=(80, 60, 40, 20))
    restarted = replace(first, created=1_700_000_900.0)
    texts = [
        v1_text(first, replace(first, engine="1")),
        v1_text(later(first), replace(first, engine="1")),
        v1_text(restarted, replace(later(first), engine="1")),  # engine 0 restarted
        v1_text(later(restarted), replace(later(first), engine="1")),
    ]
    views = [monitor.observe(scrape(text, 10.0 * i), 10.0 * i) for i, text in enumerate(texts)]
    assert [v.counter_resets for v in views] == [0, 0, 1, 1]
    assert views[-1].stats is not None and views[-1].stats.models[0].invalid is None
    assert exported(views[-1])["specdecode_counter_resets_total"] == {(): 1.0}
