"""The speedup measured from the engine's own TPOT with speculation on and off, at matched load."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import measured_speedup as ms
from sidecar.core.measured_speedup import SpeedHistory, SpeedSample
from sidecar.core.policy import Observation, PolicyConfig, PolicyState, Reason, decide, effective_threshold
from sidecar.core.quantile import histogram_mean
from sidecar.core.stats import ModelStats, Quantiles, Stats
from sidecar.core.verdict import Verdict

K = 4


def windows(
    rng: random.Random, n: int, *, on: bool, running: float, base: float, length: float, cost: float, noise: float
) -> list[SpeedSample]:
    """n windows whose TPOT follows the speedup model: off = base, on = base·(1 + k·c) / L, with noise."""
    tpot = base * (1 + K * cost) / length if on else base
    return [
        SpeedSample(
            at=float(i),
            speculation=on,
            running=running,
            tpot=tpot * math.exp(rng.gauss(0, noise)),
            requests=100.0,
            mean_acceptance_length=length if on else None,
            num_speculative_tokens=K if on else None,
        )
        for i in range(n)
    ]


def test_the_speedup_and_the_effective_draft_cost_are_recovered_from_latency() -> None:
    rng = random.Random(1)
    samples = windows(rng, 8, on=True, running=3, base=0.05, length=2.2, cost=0.25, noise=0.03)
    samples += windows(rng, 8, on=False, running=3, base=0.05, length=2.2, cost=0.25, noise=0.03)
    m = ms.measure(samples)
    assert m is not None
    assert m.speedup == pytest.approx(2.2 / 2.0, rel=0.05)  # L / (1 + k·c) = 2.2 / 2
    assert m.low < 1.1 < m.high
    assert m.draft_cost == pytest.approx(0.25, abs=0.03)
    assert m.breakeven_acceptance == pytest.approx(0.25, abs=0.03)  # the break-even ratio is the effective c
    assert m.established and m.policy_threshold == pytest.approx(m.breakeven_acceptance)


def test_windows_at_different_load_are_never_compared() -> None:
    rng = random.Random(2)
    # Off windows only at 10 running requests, on windows only at 1: no band holds both.
    samples = windows(rng, 6, on=True, running=1, base=0.02, length=3.0, cost=0.1, noise=0.02)
    samples += windows(rng, 6, on=False, running=10, base=0.08, length=3.0, cost=0.1, noise=0.02)
    assert ms.measure(samples) is None


def test_matched_load_removes_what_load_alone_does_to_latency() -> None:
    """Busy windows are slower whatever speculation does; comparing across loads would credit speculation."""
    rng = random.Random(3)
    samples = []
    for running, base in ((1.5, 0.02), (12, 0.08)):
        samples += windows(rng, 6, on=False, running=running, base=base, length=1.5, cost=0.3, noise=0.02)
    samples += windows(rng, 6, on=True, running=1.5, base=0.02, length=1.5, cost=0.3, noise=0.02)
    m = ms.measure(samples)
    assert m is not None
    assert m.speedup == pytest.approx(1.5 / 2.2, rel=0.05)  # slower: L = 1.5 does not pay for c = 0.3 at k = 4
    assert m.speedup < 1 and m.high < 1
    assert [b.band for b in m.bands] == [ms.load_band(1.5)]


def test_a_handful_of_windows_is_not_established_and_says_what_is_missing() -> None:
    rng = random.Random(4)
    samples = windows(rng, 3, on=True, running=2, base=0.05, length=2.0, cost=0.2, noise=0.03)
    samples += windows(rng, 5, on=False, running=2, base=0.05, length=2.0, cost=0.2, noise=0.03)
    m = ms.measure(samples)
    assert m is not None and not m.established and m.policy_threshold is None
    assert "2 more windows with speculation on" in m.evidence_needed


def test_noisy_latency_gives_a_wide_interval_that_does_not_take_over() -> None:
    rng = random.Random(5)
    samples = windows(rng, 6, on=True, running=2, base=0.05, length=2.0, cost=0.2, noise=0.4)
    samples += windows(rng, 6, on=False, running=2, base=0.05, length=2.0, cost=0.2, noise=0.4)
    m = ms.measure(samples)
    assert m is not None
    assert m.draft_cost_high is not None and m.draft_cost_low is not None
    assert m.draft_cost_high - m.draft_cost_low > ms.MAX_BREAKEVEN_WIDTH
    assert not m.established and "interval" in m.evidence_needed


@settings(max_examples=60, deadline=None)
@given(
    cost=st.floats(0.0, 0.6),
    length=st.floats(1.2, 4.5),
    seed=st.integers(0, 10_000),
)
def test_the_95_percent_interval_covers_the_true_speedup_in_nearly_every_case(
    cost: float, length: float, seed: int
) -> None:
    rng = random.Random(seed)
    samples = windows(rng, 20, on=True, running=4, base=0.03, length=length, cost=cost, noise=0.02)
    samples += windows(rng, 20, on=False, running=4, base=0.03, length=length, cost=cost, noise=0.02)
    m = ms.measure(samples)
    assert m is not None
    truth = length / (1 + K * cost)
    # 95 % intervals: a miss by more than a whisker would be a bug, not bad luck, at this noise.
    assert m.low * 0.97 <= truth <= m.high * 1.03
    assert m.draft_cost is not None and m.draft_cost == pytest.approx(cost, abs=0.1)


def test_load_bands_are_powers_of_two() -> None:
    assert [ms.load_band(x) for x in (0.0, 0.9, 1.0, 1.9, 2.0, 3.9, 4.0, 100.0)] == [0, 0, 1, 1, 2, 2, 3, 7]
    assert [ms.band_label(b) for b in (0, 1, 2, 3)] == ["<1", "1-2", "2-4", "4-8"]


BASE = ModelStats(
    model_name="tiny", speculation=True, drafts=100.0, draft_tokens=400.0, accepted_tokens=200.0,
    acceptance_ratio=0.5, mean_acceptance_length=3.0, alpha_estimate=0.7, num_speculative_tokens=4,
    position_acceptance=(0.7, 0.6, 0.4, 0.3), breakeven_acceptance_length=1.0, expected_speedup=3.0,
    latency={"tpot": Quantiles(0.02, 0.03, 0.04, 0.05), "e2e": Quantiles(1.0, 1.5, 1.8, 2.5)},
    latency_observations={"tpot": 50.0, "e2e": 50.0}, kv_cache_usage=0.1, generation_tokens=900.0,
    generation_tokens_per_second=15.0, verdict=Verdict.KEEP, latency_mean={"tpot": 0.021}, requests_running=3.0,
)  # fmt: skip


def test_learning_keeps_one_sample_per_window_per_state_and_skips_thin_windows() -> None:
    history = ms.learn(SpeedHistory(), Stats("vllm", (BASE,), 60.0), now=0.0, every=60.0)
    history = ms.learn(history, Stats("vllm", (BASE,), 60.0), now=30.0, every=60.0)  # overlapping: ignored
    off = replace(BASE, speculation=False, acceptance_ratio=None, mean_acceptance_length=None)
    history = ms.learn(history, Stats("vllm", (off,), 60.0), now=60.0, every=60.0)
    thin = replace(BASE, latency_observations={"tpot": 3.0})
    history = ms.learn(history, Stats("vllm", (thin,), 60.0), now=120.0, every=60.0)
    assert len(history.on["tiny"]) == 1 and len(history.off["tiny"]) == 1
    sample = history.on["tiny"][0]
    assert (sample.tpot, sample.running, sample.e2e_p99, sample.mean_acceptance_length) == (0.021, 3.0, 2.5, 3.0)
    assert history.off["tiny"][0].mean_acceptance_length is None


def test_the_policy_judges_against_the_measured_break_even_only_once_it_is_given() -> None:
    config = PolicyConfig()
    plain = Observation(True, True, 0.4, 1000.0, window_seconds=60.0)
    measured = replace(plain, measured_threshold=0.25)
    assert effective_threshold(plain, config) == 0.5
    assert effective_threshold(measured, config) == 0.25
    assert effective_threshold(measured, replace(config, measured_breakeven=False)) == 0.5
    # 0.4 with 1000 binomial-ish tokens fails 0.5 but passes a measured 0.25.
    state = PolicyState(speculation=True)
    fixed = decide(plain, state, config, 1_800_000_000.0)
    assert fixed.reason is Reason.TRIPPING
    kept = decide(measured, state, config, 1_800_000_000.0)
    assert kept.reason is Reason.HEALTHY


def test_the_mean_of_a_histogram_counts_each_bucket_at_its_midpoint() -> None:
    assert histogram_mean(((0.1, 10.0), (0.5, 60.0), (math.inf, 60.0))) == pytest.approx((10 * 0.05 + 50 * 0.3) / 60)
    # What lies beyond the last bound counts at that bound, as histogram_quantile answers there.
    assert histogram_mean(((1.0, 0.0), (math.inf, 4.0))) == 1.0
    assert histogram_mean(((1.0, 0.0), (math.inf, 0.0))) is None
    assert histogram_mean(((1.0, 3.0),)) is None


def test_the_windows_kept_on_the_target_read_back_as_they_were_and_a_hand_edit_reads_as_absent() -> None:
    rng = random.Random(6)
    samples = windows(rng, 40, on=True, running=2.5, base=0.05, length=2.0, cost=0.2, noise=0.03)
    samples += windows(rng, 3, on=False, running=2.5, base=0.05, length=2.0, cost=0.2, noise=0.03)
    text = ms.encode(ms.with_samples(SpeedHistory(), "tiny", samples), "tiny")
    assert text is not None and len(text) < 4096  # an annotation, not a database
    decoded = ms.decode(text)
    assert decoded is not None
    model, back = decoded
    assert model == "tiny"
    assert sum(s.speculation for s in back) == ms.STORED_WINDOWS and sum(not s.speculation for s in back) == 3
    assert [round(s.tpot, 4) for s in back if not s.speculation] == [round(s.tpot, 4) for s in samples[-3:]]
    assert ms.encode(SpeedHistory(), "tiny") is None
    for broken in ("", "{", "[]", '{"v":2,"model":"tiny"}', '{"v":1,"model":"tiny","on":[[1,2]]}'):
        assert ms.decode(broken) is None


def test_the_finding_says_which_side_of_one_the_whole_interval_lies_on() -> None:
    def measured(tpot_on: float) -> ms.MeasuredSpeedup:
        samples = [
            SpeedSample(float(i), on, 3.0, (tpot_on if on else 0.05) * (1 + 0.01 * (i % 3)), 40.0,
                        mean_acceptance_length=3.0 if on else None, num_speculative_tokens=4 if on else None)
            for i in range(6) for on in (True, False)
        ]  # fmt: skip
        m = ms.measure(samples)
        assert m is not None
        return m

    assert measured(0.08).finding == "slower"
    assert measured(0.03).finding == "faster"
    assert measured(0.05).finding == "unclear"


def _tpot_text(count: float, total: float | None) -> str:
    labels = 'engine="0",model_name="tiny"'
    bounds = [("0.01", count), ("0.025", count), ("+Inf", count)]
    lines = [f"vllm:num_requests_running{{{labels}}} 3.0"]
    lines += [f'vllm:request_time_per_output_token_seconds_bucket{{{labels},le="{le}"}} {n}' for le, n in bounds]
    lines.append(f"vllm:request_time_per_output_token_seconds_count{{{labels}}} {count}")
    if total is not None:
        lines.append(f"vllm:request_time_per_output_token_seconds_sum{{{labels}}} {total}")
    return "\n".join(lines) + "\n"


def test_the_window_mean_tpot_is_exact_from_the_sum_where_the_buckets_cannot_tell_7_ms_from_9_ms() -> None:
    """On a CPU every request's TPOT sits under vLLM's first bucket bound (10 ms): the buckets say 5 ms for all."""
    from tests.support.exposition_text import only_model, stats_of

    fast = only_model(stats_of(_tpot_text(10, 0.07), _tpot_text(110, 0.07 + 100 * 0.007)))
    slow = only_model(stats_of(_tpot_text(10, 0.09), _tpot_text(110, 0.09 + 100 * 0.009)))
    assert fast.latency_mean["tpot"] == pytest.approx(0.007)
    assert slow.latency_mean["tpot"] == pytest.approx(0.009)
    # Without _sum (an engine or a Prometheus query that gives buckets only) the buckets' estimate stays.
    buckets_only = only_model(stats_of(_tpot_text(10, None), _tpot_text(110, None)))
    assert buckets_only.latency_mean["tpot"] == pytest.approx(0.005)
