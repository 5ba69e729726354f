"""A big or slow scrape never starves the sidecar (issue #11): the real `spec-sidecar run` against hostile engines
on 127.0.0.1 (tests/support/hostile_engine.py), /healthz timed from this process while it parses.

How /healthz is judged: probes start every 25 ms on a fixed schedule while scrapes are read and parsed, each on
its own connection whether or not earlier ones have answered (so a blocked event loop is sampled as often as a
free one). What is asserted is that no parse holds the event loop, not a latency figure (those are benchmarks:
docs/benchmarks.md, "Hostile scrapes", /healthz P90 under 15 ms): a probe that lands on a blocked loop waits for
the rest of the parse, so on a blocked loop the P90 is most of a scrape's duration (6.8 s on the 33 MB histogram
body, parsed on the event loop by an older main); on a free loop it is a small fraction of it. So the P90 (of at
least 40 probes) must be under a third of the scrape's own duration as the sidecar measured it in the same run,
or under 100 ms whichever is larger. A loaded machine slows the scrapes and the probes alike, so the comparison
holds under load where a fixed 100 ms did not (P90 of 170-250 ms at load average 7 with 30 MB every 0.3 s, the
body itself being read on the event loop). Peak memory is the sidecar process's VmHWM.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.hostile_engine import (
    HostileEngine,
    churn_body,
    escaped_label_body,
    histogram_body,
    hostile_engine,
    many_models_body,
)
from tests.support.payloads import vllm_payload
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

MIB = 1024 * 1024


def _peak_rss_mib(sidecar: SidecarProcess) -> float:
    for line in Path(f"/proc/{sidecar.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _healthz_while_scraping(sidecar: SidecarProcess, engine: HostileEngine, scrapes: int) -> list[float]:
    """/healthz latencies of probes started every 25 ms on a fixed schedule, each on its own connection, whether
    or not earlier ones have answered, from the first scrape until ``scrapes`` more have started (at least 40
    probes; at most 90 s). Probes that wait for each other would sample a blocked loop once per block; these
    sample it as often as an idle one, so the quantiles are quantiles over time."""
    wait_until(lambda: engine.hits >= 1, 30, sidecar.log)
    target = engine.hits + scrapes
    host, port = sidecar.url.removeprefix("http://").split(":")
    futures: list[Future[float]] = []
    deadline = time.monotonic() + 90
    with ThreadPoolExecutor(max_workers=256) as pool:
        next_at = time.monotonic()
        while (engine.hits < target or len(futures) < 40) and time.monotonic() < deadline:
            futures.append(pool.submit(_probe, host, int(port)))
            next_at += 0.025
            time.sleep(max(0.0, next_at - time.monotonic()))
        latencies = [f.result() for f in futures]
    assert engine.hits >= target, f"only {engine.hits} scrapes in 90 s\n{sidecar.log()}"
    return latencies


def _probe(host: str, port: int) -> float:
    """One GET /healthz on a fresh connection (a raw socket: an HTTP client would cost more than the answer)."""
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    return time.perf_counter() - started


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def _assert_loop_never_held_by_a_parse(
    latencies: list[float], sidecar: SidecarProcess, statistic: Callable[[list[float]], float] = _p90
) -> None:
    """``statistic`` of the probes' latencies is under a third of the last scrape's duration, or 100 ms."""
    scrape = sidecar.value("specdecode_scrape_duration_seconds")
    assert scrape is not None, sidecar.log()
    bound = max(0.1, scrape / 3)
    assert statistic(latencies) < bound, f"{_spread(latencies)}; last scrape took {scrape * 1000:.0f} ms"


def _spread(values: list[float]) -> str:
    ms = [round(v * 1000, 1) for v in sorted(values)]
    return f"{len(ms)} probes, ms: median {statistics.median(ms)}, p90 {_p90(ms)}, slowest {ms[-5:]}"


def _counter(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    return sidecar.value(name, **labels) or 0.0


def test_healthz_stays_fast_and_memory_small_while_a_30mb_scrape_with_a_15mb_escaped_label_value_is_parsed(
    tmp_path: Path,
) -> None:
    body = escaped_label_body()
    assert len(body) > 30 * MIB
    with (
        hostile_engine(lambda n: body) as engine,
        run_sidecar(tmp_path, "--vllm-url", engine.url, "--scrape-interval", "1") as sidecar,
    ):
        latencies = _healthz_while_scraping(sidecar, engine, 3)
        _assert_loop_never_held_by_a_parse(latencies, sidecar)
        # Today's main: 2 GB (the label regex kept ~160 bytes per character of the value).
        assert _peak_rss_mib(sidecar) < 300
        # The line with the huge value is dropped and counted; the rest of the scrape is used.
        wait_until(lambda: _counter(sidecar, "specdecode_dropped_total", reason="label_bytes") >= 1, 10, sidecar.log)
        assert sidecar.value("specdecode_target_up") == 1.0
        assert sidecar.value("specdecode_speculation_enabled", model_name="tiny") == 1.0


def test_healthz_stays_fast_and_memory_small_while_33mb_of_valid_histogram_series_are_parsed(tmp_path: Path) -> None:
    body = histogram_body()
    with (
        hostile_engine(lambda n: body) as engine,
        run_sidecar(tmp_path, "--vllm-url", engine.url, "--scrape-interval", "1") as sidecar,
    ):
        latencies = _healthz_while_scraping(sidecar, engine, 3)
        _assert_loop_never_held_by_a_parse(latencies, sidecar)
        assert _peak_rss_mib(sidecar) < 300  # today's main: 685 MB, and more as the window fills
        # 380,000 samples are over --scrape-max-series: the scrape is dropped whole, and said so.
        wait_until(lambda: _counter(sidecar, "specdecode_scrapes_total", result="too_many_series") >= 1, 10)
        assert _counter(sidecar, "specdecode_dropped_total", reason="series") > 300_000
        assert sidecar.value("specdecode_target_up") == 0.0


def test_healthz_stays_fast_while_33mb_of_histogram_series_are_all_parsed_when_the_bounds_admit_them(
    tmp_path: Path,
) -> None:
    body = histogram_body()
    with (
        hostile_engine(lambda n: body) as engine,
        run_sidecar(
            tmp_path, "--vllm-url", engine.url, "--scrape-interval", "0.5", "--scrape-max-series", "500000"
        ) as sidecar,
    ):  # fmt: skip
        # Each scrape is seconds of parsing and window arithmetic in the worker thread: every probe lands in one.
        # The median, not the p90: with the bound raised 20 times, the cyclic collector's full passes over the
        # window's objects (about 0.1 s per 4 snapshots of 380,000 samples) hold the GIL for a tenth of the
        # time or more (docs/benchmarks.md, "Hostile scrapes"). On the event loop, as before, the median was
        # seconds.
        latencies = _healthz_while_scraping(sidecar, engine, 2)
        _assert_loop_never_held_by_a_parse(latencies, sidecar, statistics.median)
        wait_until(lambda: _counter(sidecar, "specdecode_scrapes_total", result="success") >= 2, 30, sidecar.log)
        assert sidecar.value("specdecode_target_up") == 1.0


def test_a_target_trickling_its_body_times_out_within_the_scrape_timeout_and_its_window_stops_being_exported(
    tmp_path: Path,
) -> None:
    good: Callable[[int], bytes] = lambda n: vllm_payload("tiny", 100.0 * n, 400.0 * n, 300.0 * n).encode()  # noqa: E731
    with (
        hostile_engine(good, trickle_seconds=0.5, trickle_from=10**9) as engine,
        run_sidecar(
            tmp_path, "--vllm-url", engine.url, "--scrape-interval", "0.3", "--scrape-timeout", "1.5",
            "--min-draft-tokens", "1",
        ) as sidecar,
    ):  # fmt: skip
        wait_until(lambda: sidecar.value("specdecode_acceptance_ratio", model_name="tiny") == 0.75, 15, sidecar.log)
        # From the next scrape on, every byte comes 0.5 s apart: each read is quick, the whole is not.
        engine.trickle_from = engine.hits + 1
        wait_until(lambda: _counter(sidecar, "specdecode_scrapes_total", result="timeout") >= 1, 10, sidecar.log)
        assert sidecar.value("specdecode_target_up") == 0.0
        assert sidecar.value("specdecode_acceptance_ratio", model_name="tiny") is None
        age = sidecar.value("specdecode_last_scrape_age_seconds")
        assert age is not None and age >= 1.0
        report = httpx.get(sidecar.url + "/api/report", timeout=5).json()
        assert report["target_up"] is False and report["models"] == []


def test_a_window_older_than_stale_after_is_exported_with_its_age_but_not_as_current(tmp_path: Path) -> None:
    good: Callable[[int], bytes] = lambda n: vllm_payload("tiny", 100.0 * n, 400.0 * n, 300.0 * n).encode()  # noqa: E731
    with (
        hostile_engine(good) as engine,
        run_sidecar(
            tmp_path, "--vllm-url", engine.url, "--scrape-interval", "120", "--stale-after", "6"
        ) as sidecar,
    ):  # fmt: skip
        # One good scrape, and the next one two minutes away: nothing new is published meanwhile.
        wait_until(lambda: sidecar.value("specdecode_target_up") == 1.0, 10, sidecar.log)
        assert sidecar.value("specdecode_speculation_enabled", model_name="tiny") == 1.0
        wait_until(lambda: sidecar.value("specdecode_target_up") == 0.0, 15, sidecar.log)
        assert engine.hits == 1
        assert sidecar.value("specdecode_speculation_enabled", model_name="tiny") is None
        age = sidecar.value("specdecode_last_scrape_age_seconds")
        assert age is not None and age > 6.0


def test_twenty_thousand_model_names_keep_only_max_models_and_count_the_rest(tmp_path: Path) -> None:
    with (
        hostile_engine(many_models_body) as engine,
        run_sidecar(
            tmp_path, "--vllm-url", engine.url, "--scrape-interval", "1", "--min-draft-tokens", "1",
            "--max-models", "50", "--trend-max-points", "120", "--scrape-max-series", "100000",
        ) as sidecar,
    ):  # fmt: skip
        latencies = _healthz_while_scraping(sidecar, engine, 5)
        _assert_loop_never_held_by_a_parse(latencies, sidecar)
        wait_until(lambda: _counter(sidecar, "specdecode_dropped_total", reason="trend_points") > 0, 20, sidecar.log)
        metrics = sidecar.metrics()
        ratios = [k for k in metrics if k[0] == "specdecode_acceptance_ratio"]
        assert len(ratios) == 50
        assert ("specdecode_acceptance_ratio", (("model_name", "model-0"),)) in metrics
        assert metrics[("specdecode_dropped_total", (("reason", "models"),))] >= 19_951 * 3
        assert _peak_rss_mib(sidecar) < 200  # today's main: 910 MB after 53 scrapes, growing for an hour


def test_memory_stops_growing_when_every_scrape_brings_a_new_label_name(tmp_path: Path) -> None:
    with (
        hostile_engine(churn_body) as engine,
        run_sidecar(tmp_path, "--vllm-url", engine.url, "--scrape-interval", "0.1", "--window", "1") as sidecar,
    ):
        # The window holds about 11 snapshots; after 30 scrapes everything bounded has reached its bound.
        wait_until(lambda: engine.hits >= 30, 60, sidecar.log)
        settled = sidecar.rss_kib() / 1024
        wait_until(lambda: engine.hits >= 120, 120, sidecar.log)
        grown = sidecar.rss_kib() / 1024 - settled
        assert grown < 25, f"{settled:.0f} MiB after 30 scrapes, {grown:.0f} MiB more after 120"
        assert _peak_rss_mib(sidecar) < 150
