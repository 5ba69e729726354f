"""`spec-sidecar run` as a real process, scraping a real HTTP endpoint that plays the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.payloads import vllm_payload
from tests.support.replay import MetricsReplay, metrics_replay
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

FAST = ("--scrape-interval", "0.2", "--scrape-timeout", "1", "--window", "600", "--min-draft-tokens", "100")


@pytest.fixture
def replay() -> Iterator[MetricsReplay]:
    with metrics_replay() as r:
        yield r


def _hits_advance(replay: MetricsReplay, by: int = 2) -> None:
    start = replay.behaviour.hits
    wait_until(lambda: replay.behaviour.hits >= start + by, 10)


def _up(sidecar: SidecarProcess) -> float | None:
    return sidecar.value("specdecode_target_up")


def test_exported_acceptance_is_the_window_increase_of_the_engine_counters(
    replay: MetricsReplay, tmp_path: Path
) -> None:
    replay.serve(vllm_payload(drafts=100, draft_tokens=400, accepted=200, per_position=(80, 60, 40, 20)))
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *FAST) as sidecar:
        wait_until(lambda: _up(sidecar) == 1.0, 10, sidecar.log)
        replay.serve(vllm_payload(drafts=300, draft_tokens=1200, accepted=800, per_position=(250, 200, 150, 100)))
        _hits_advance(replay)
        metrics = sidecar.metrics()
        report = httpx.get(sidecar.url + "/api/report").json()
    assert report["target_up"] is True
    assert report["bucket_window_seconds"] == 300  # the default --bucket-window: how far back the buckets reach
    assert report["models"][0]["acceptance_ratio"] == pytest.approx(600 / 800)
    assert report["models"][0]["verdict"] == "keep"
    model = (("model_name", "tiny"),)
    # Window = first scrape .. last scrape: increases 800 draft tokens, 600 accepted, 200 drafts.
    assert metrics[("specdecode_acceptance_ratio", model)] == pytest.approx(600 / 800)
    assert metrics[("specdecode_mean_acceptance_length", model)] == pytest.approx(1 + 600 / 200)
    assert metrics[("specdecode_alpha_estimate", model)] == pytest.approx(170 / 200)
    assert metrics[("specdecode_num_speculative_tokens", model)] == 4
    assert metrics[("specdecode_window_draft_tokens", model)] == 800
    assert metrics[("specdecode_speculation_enabled", model)] == 1
    positions = [
        metrics[("specdecode_position_acceptance_ratio", (("model_name", "tiny"), ("position", str(i))))]
        for i in range(4)
    ]
    assert positions == pytest.approx([170 / 200, 140 / 200, 110 / 200, 80 / 200])


def test_readyz_waits_for_the_first_good_scrape(replay: MetricsReplay, tmp_path: Path) -> None:
    replay.serve(b"", status=503)
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *FAST) as sidecar:
        _hits_advance(replay)
        assert httpx.get(sidecar.url + "/readyz").status_code == 503
        assert httpx.get(sidecar.url + "/healthz").status_code == 200
        replay.serve(vllm_payload(drafts=1, draft_tokens=4, accepted=1, per_position=(1, 0, 0, 0)))
        wait_until(lambda: httpx.get(sidecar.url + "/readyz").status_code == 200, 10, sidecar.log)


@pytest.mark.parametrize(
    ("failure", "result"),
    [
        ("unreachable", "unreachable"),
        ("slow", "timeout"),
        ("http_500", "http_error"),
        ("garbage", "bad_payload"),
        ("oversized", "too_large"),
    ],
)
def test_a_failing_engine_drops_target_up_and_derived_gauges_but_the_loop_keeps_going(
    replay: MetricsReplay, tmp_path: Path, failure: str, result: str
) -> None:
    def good(n: int) -> str:  # traffic keeps flowing at acceptance 0.75 whatever the window
        return vllm_payload(
            drafts=10 * n, draft_tokens=400 * n, accepted=300 * n, per_position=(9 * n, 8 * n, 7 * n, 6 * n)
        )

    replay.serve(good(1))
    flags = (*FAST, "--scrape-max-bytes", "100000")
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *flags) as sidecar:
        _hits_advance(replay, 1)
        replay.serve(good(2))
        wait_until(lambda: sidecar.value("specdecode_acceptance_ratio", model_name="tiny") is not None, 10, sidecar.log)
        if failure == "unreachable":
            replay.stop()
        elif failure == "slow":
            replay.serve(good(3), delay_seconds=2.5)
        elif failure == "http_500":
            replay.serve(b"internal error", status=500)
        elif failure == "garbage":
            replay.serve(b"\x00\xff not metrics {{{ at all\n" * 50)
        else:
            replay.serve(good(3) + "# padding\n" * 20000)
        wait_until(lambda: _up(sidecar) == 0.0, 15, sidecar.log)
        failures = sidecar.value("specdecode_scrapes_total", result=result)
        assert failures is not None and failures >= 1
        assert sidecar.value("specdecode_acceptance_ratio", model_name="tiny") is None
        assert httpx.get(sidecar.url + "/healthz").status_code == 200
        if failure != "unreachable":
            replay.serve(good(4))
            wait_until(lambda: _up(sidecar) == 1.0, 15, sidecar.log)
            assert sidecar.value("specdecode_acceptance_ratio", model_name="tiny") == pytest.approx(0.75)


def test_an_engine_restart_inside_the_window_counts_from_zero(replay: MetricsReplay, tmp_path: Path) -> None:
    replay.serve(vllm_payload(drafts=500, draft_tokens=2000, accepted=1500, per_position=(4, 3, 2, 1)))
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *FAST) as sidecar:
        wait_until(lambda: _up(sidecar) == 1.0, 10, sidecar.log)
        # Restarted engine: smaller counters and a new _created timestamp.
        restarted = vllm_payload(
            drafts=50, draft_tokens=200, accepted=40, per_position=(20, 10, 6, 4), created=1_800_000_000
        )
        replay.serve(restarted)
        _hits_advance(replay)
        ratio = sidecar.value("specdecode_acceptance_ratio", model_name="tiny")
    assert ratio == pytest.approx(40 / 200)


def test_speculation_off_exports_enabled_zero_and_no_acceptance(replay: MetricsReplay, tmp_path: Path) -> None:
    replay.serve(vllm_payload(ttft_buckets=(("0.1", 0), ("1.0", 0), ("+Inf", 0))))
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *FAST) as sidecar:
        wait_until(lambda: _up(sidecar) == 1.0, 10, sidecar.log)
        replay.serve(vllm_payload(ttft_buckets=(("0.1", 50), ("1.0", 99), ("+Inf", 100))))
        _hits_advance(replay)
        metrics = sidecar.metrics()
    model = (("model_name", "tiny"),)
    assert metrics[("specdecode_speculation_enabled", model)] == 0
    assert ("specdecode_acceptance_ratio", model) not in metrics
    p50 = metrics[("specdecode_latency_seconds", (("metric", "ttft"), ("model_name", "tiny"), ("quantile", "0.5")))]
    assert p50 == pytest.approx(0.1)


def test_a_configured_baseline_yields_the_divergence(replay: MetricsReplay, tmp_path: Path) -> None:
    replay.serve(vllm_payload(ttft_buckets=(("0.1", 0), ("1.0", 0), ("+Inf", 0))))
    with run_sidecar(tmp_path, "--vllm-url", replay.url, *FAST, "--baseline-p99-p50", "ttft=2.0") as sidecar:
        wait_until(lambda: _up(sidecar) == 1.0, 10, sidecar.log)
        replay.serve(vllm_payload(ttft_buckets=(("0.1", 50), ("1.0", 100), ("+Inf", 100))))
        _hits_advance(replay)
        metrics = sidecar.metrics()
    labels = (("metric", "ttft"), ("model_name", "tiny"))
    p50 = 0.1  # rank 50 is reached exactly at the end of the first bucket
    p99 = 0.1 + (1.0 - 0.1) * (99 - 50) / 50  # linear inside the second bucket
    assert metrics[("specdecode_latency_p99_p50_ratio", labels)] == pytest.approx(p99 / p50)
    assert metrics[("specdecode_latency_p99_p50_ratio_baseline", labels)] == 2.0
    assert metrics[("specdecode_latency_divergence", labels)] == pytest.approx(p99 / p50 / 2.0)
