"""The Monitor's state transitions, driven with fake time and hand-made scrape results."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings
from tests.support.payloads import vllm_payload


def scrape(
    now: float,
    *,
    drafts: float | None = None,
    draft_tokens: float | None = None,
    accepted: float | None = None,
    ttft_buckets: Sequence[tuple[str, float]] = (),
) -> ScrapeResult:
    payload = vllm_payload(drafts=drafts, draft_tokens=draft_tokens, accepted=accepted, ttft_buckets=ttft_buckets)
    snapshot, _, _ = parse_payload(payload, now)
    return ScrapeResult("success", snapshot, 0.01)


def down() -> ScrapeResult:
    return ScrapeResult("unreachable", None, 0.01, detail="connection refused")


def test_the_window_keeps_the_newest_snapshot_before_its_start() -> None:
    monitor = Monitor(Settings(window=30))
    monitor.observe(scrape(0, drafts=0, draft_tokens=0, accepted=0), 0)
    monitor.observe(scrape(20, drafts=10, draft_tokens=100, accepted=10), 20)
    view = monitor.observe(scrape(40, drafts=20, draft_tokens=200, accepted=110), 40)
    assert view.stats is not None
    # Start of window is t=10; the snapshot at t=0 is the newest at or before it.
    assert view.stats.window_seconds == 40
    view = monitor.observe(scrape(55, drafts=30, draft_tokens=300, accepted=210), 55)
    assert view.stats is not None
    # Start is now t=25: t=20 is the newest before it, t=0 has left.
    assert view.stats.window_seconds == 35
    model = view.stats.models[0]
    assert model.draft_tokens == 200
    assert model.acceptance_ratio == 200 / 200


def test_the_first_scrape_alone_is_no_window_so_no_ratio() -> None:
    monitor = Monitor(Settings())
    view = monitor.observe(scrape(0, drafts=50, draft_tokens=500, accepted=400), 0)
    assert view.stats is not None
    assert view.stats.models[0].acceptance_ratio is None
    assert view.stats.models[0].speculation is True
    assert view.ready is True


def test_a_failed_scrape_publishes_no_stats_but_keeps_readiness_and_counts() -> None:
    monitor = Monitor(Settings())
    monitor.observe(scrape(0, drafts=0, draft_tokens=0, accepted=0), 0)
    view = monitor.observe(down(), 5)
    assert view.stats is None
    assert view.target_up is False
    assert view.ready is True
    assert view.last_success_at == 0
    assert view.scrapes == {"success": 1, "unreachable": 1}


def test_the_baseline_is_learned_only_from_windows_without_speculation() -> None:
    monitor = Monitor(Settings(window=10))
    empty = (("0.1", 0.0), ("1.0", 0.0), ("+Inf", 0.0))
    grown = (("0.1", 50.0), ("1.0", 100.0), ("+Inf", 100.0))
    monitor.observe(scrape(0, ttft_buckets=empty), 0)
    view = monitor.observe(scrape(20, ttft_buckets=grown), 20)
    p99_over_p50 = (0.1 + 0.9 * 49 / 50) / 0.1
    assert view.baseline.ratio("tiny", "ttft") == p99_over_p50
    # With speculation on, the same latency is not learned as a baseline.
    spec = Monitor(Settings(window=10))
    spec.observe(scrape(0, drafts=0, draft_tokens=0, accepted=0, ttft_buckets=empty), 0)
    view = spec.observe(scrape(20, drafts=5, draft_tokens=20, accepted=5, ttft_buckets=grown), 20)
    assert view.baseline.ratio("tiny", "ttft") is None
