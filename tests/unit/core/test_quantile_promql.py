"""``promql_histogram_quantile`` against the real PromQL engine (Debian's promtool).

``promtool test rules`` evaluates PromQL over series we give it. Every case is written as an expression test
whose expectation can never hold, so promtool reports what PromQL actually got for each one; those answers are
compared with ours. Cases are hand-picked edge cases plus batches drawn by hypothesis.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.quantile import histogram_quantile, promql_histogram_quantile
from sidecar.core.snapshot import build_snapshot
from sidecar.core.stats import QUANTILES, AnalysisConfig, compute_stats

REPO = Path(__file__).resolve().parents[3]
PARSER = SampleParser(wanted_sample_names(), openmetrics_aliases(wanted_sample_names()))


@dataclass(frozen=True)
class Case:
    """One histogram_quantile call: q and the bucket series as (le label as written, count)."""

    q: float
    buckets: tuple[tuple[str, float], ...]

    def as_floats(self) -> list[tuple[float, float]]:
        return [(float(le), count) for le, count in self.buckets]


@pytest.fixture(scope="module")
def promtool() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-prometheus.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"FAIL: scripts/install-prometheus.sh could not install promtool:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def _number(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)


def _test_file(cases: Sequence[Case]) -> str:
    series: list[str] = []
    exprs: list[str] = []
    for i, case in enumerate(cases):
        for le, count in case.buckets:
            series.append(f"      - series: 'h{i}_bucket{{le=\"{le}\"}}'\n        values: '{_number(count)}'\n")
        # The expectation is a series that never exists, so promtool always prints what it got.
        exprs.append(
            f"      - expr: 'histogram_quantile({_number(case.q)}, h{i}_bucket)'\n"
            "        eval_time: 0m\n"
            "        exp_samples: [{labels: 'never_matches', value: 0}]\n"
        )
    return (
        "tests:\n  - interval: 1m\n    input_series:\n" + "".join(series) + "    promql_expr_test:\n" + "".join(exprs)
    )


_REPORT = re.compile(
    r'expr: "histogram_quantile\([^,]*, h(\d+)_bucket\)", time: [^\n]*\n\s*exp: [^\n]*\n\s*got: ([^\n]*)'
)


def promql_answers(promtool: str, cases: Sequence[Case], workdir: Path) -> list[float | None]:
    """PromQL's value for each case (None: no sample at all), as promtool reports it."""
    path = workdir / "quantile_cases.yml"
    path.write_text(_test_file(cases))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    answers: dict[int, float | None] = {}
    for index, got in _REPORT.findall(output):
        answers[int(index)] = None if got == "nil" else float(got.removeprefix("{} "))
    missing = [i for i in range(len(cases)) if i not in answers]
    assert not missing, f"promtool reported no answer for cases {missing}:\n{output[-3000:]}"
    return [answers[i] for i in range(len(cases))]


def _same(ours: float, theirs: float | None) -> bool:
    if theirs is None:
        return False
    if math.isnan(ours) or math.isnan(theirs):
        return math.isnan(ours) and math.isnan(theirs)
    return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)


def assert_matches_promql(promtool: str, cases: Sequence[Case], workdir: Path) -> None:
    theirs = promql_answers(promtool, cases, workdir)
    wrong = [
        (case, ours, promql)
        for case, promql in zip(cases, theirs, strict=True)
        if not _same(ours := promql_histogram_quantile(case.q, case.as_floats()), promql)
    ]
    assert not wrong, "ours differs from PromQL (case, ours, PromQL):\n" + "\n".join(map(str, wrong))


INF = math.inf
HAND_PICKED = [
    # The ordinary case: interpolation inside a bucket, the first one starting from 0.
    Case(0.5, (("0.1", 2), ("0.5", 6), ("1", 9), ("+Inf", 10))),
    Case(0.1, (("0.1", 2), ("0.5", 6), ("1", 9), ("+Inf", 10))),
    Case(0.9, (("0.1", 2), ("0.5", 6), ("1", 9), ("+Inf", 10))),
    # No +Inf bucket: NaN.
    Case(0.5, (("0.1", 2), ("0.5", 6), ("1", 9))),
    # A single bucket, even +Inf alone: NaN.
    Case(0.5, (("+Inf", 10),)),
    Case(0.5, (("1", 10),)),
    # Zero observations: NaN.
    Case(0.5, (("1", 0), ("+Inf", 0))),
    # q = 0 with an empty first bucket (0/0 inside the bucket) and with a non-empty one.
    Case(0.0, (("1", 0), ("2", 5), ("+Inf", 10))),
    Case(0.0, (("1", 3), ("2", 5), ("+Inf", 10))),
    # q = 1, and ranks landing in the +Inf bucket: the highest finite bound.
    Case(1.0, (("1", 2), ("2", 5), ("+Inf", 10))),
    Case(0.99, (("1", 2), ("2", 5), ("+Inf", 10))),
    Case(1.0, (("1", 10), ("2", 10), ("+Inf", 10))),
    # First bound <= 0: that bound.
    Case(0.1, (("-1", 3), ("1", 5), ("+Inf", 6))),
    Case(0.1, (("0", 3), ("1", 5), ("+Inf", 6))),
    Case(0.9, (("-2", 3), ("-1", 5), ("+Inf", 6))),
    # Non-monotonic counts are forced monotonic.
    Case(0.5, (("1", 5), ("2", 3), ("3", 8), ("+Inf", 10))),
    Case(0.5, (("1", 5), ("2", 3), ("+Inf", 4))),
    # Duplicate bounds (different spellings of one le) are merged by adding their counts.
    Case(0.5, (("1", 2), ("1.0", 3), ("+Inf", 6))),
    Case(0.5, (("1", 2), ("2", 4), ("2.0", 1), ("+Inf", 9), ("Inf", 1))),
    # q outside [0, 1] and NaN.
    Case(-0.5, (("1", 2), ("+Inf", 4))),
    Case(1.5, (("1", 2), ("+Inf", 4))),
    Case(math.nan, (("1", 2), ("+Inf", 4))),
    # NaN and infinite counts.
    Case(0.5, (("1", math.nan), ("2", 3), ("+Inf", 6))),
    Case(0.5, (("1", 2), ("+Inf", math.nan))),
    Case(0.5, (("1", 2), ("+Inf", INF))),
    # Unsorted input.
    Case(0.75, (("+Inf", 8), ("2", 6), ("1", 4))),
]


def test_hand_picked_edge_cases_equal_promql(promtool: str, tmp_path: Path) -> None:
    assert_matches_promql(promtool, HAND_PICKED, tmp_path)


def test_a_quantile_promql_cannot_compute_is_none_rather_than_zero() -> None:
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, [(1.0, 3.0), (2.0, 4.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_an_empty_bucket_list_gives_nan_where_promql_gives_no_sample() -> None:
    # PromQL returns no series at all without bucket series; the closest "absent" we have is NaN.
    assert math.isnan(promql_histogram_quantile(0.5, []))


_BOUNDS = st.sampled_from([-10.0, -1.0, -0.001, 0.0, 1e-9, 0.001, 0.005, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 1e6])
_COUNTS = st.one_of(
    st.integers(min_value=0, max_value=1000).map(float),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, math.nan, 1e300]),
)
_QS = st.one_of(
    st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([-0.1, 1.1, math.nan]),
)
_INF_SPELLINGS = ("+Inf", "Inf", "+inf", "Infinity")


def _spellings(bound: float) -> list[str]:
    """Different le strings that all parse to ``bound``: how duplicate bounds arise in real series."""
    candidates = [repr(bound), f"{bound:.17e}", f"{bound:.20g}", "+" + repr(bound) if bound >= 0 else repr(bound)]
    return list(dict.fromkeys(c for c in candidates if float(c) == bound))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    bounds = draw(st.lists(_BOUNDS, min_size=0, max_size=8))
    used: set[str] = set()
    buckets: list[tuple[str, float]] = []
    for bound in bounds:
        free = [s for s in _spellings(bound) if s not in used]
        if free:
            used.add(free[0])
            buckets.append((free[0], draw(_COUNTS)))
    if draw(st.booleans()) or not buckets:
        buckets.append((draw(st.sampled_from(_INF_SPELLINGS)), draw(_COUNTS)))
    if draw(st.booleans()):
        # The usual shape: cumulative counts.
        running = 0.0
        cumulative = []
        for le, count in sorted(buckets, key=lambda b: float(b[0])):
            running = running + count if not math.isnan(count) else running
            cumulative.append((le, running))
        buckets = cumulative
    return Case(draw(_QS), tuple(draw(st.permutations(buckets))))


# No shrinking: each step is a promtool run, and the failure message already lists only the cases that differ.
@settings(
    max_examples=8,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(cases(), min_size=40, max_size=40))
def test_drawn_cases_equal_promql(promtool: str, tmp_path: Path, batch: list[Case]) -> None:
    assert_matches_promql(promtool, batch, tmp_path)


FIXTURES = REPO / "tests" / "fixtures" / "vllm"
WINDOWS = [
    ("draft_model_startup.txt", "draft_model_after_t0.txt"),
    ("draft_model_after_t0.txt", "draft_model_after_t1.txt"),
    ("ngram_after_t0.txt", "ngram_after_t1.txt"),
]
FAMILIES = {
    "ttft": "vllm:time_to_first_token_seconds_bucket",
    "tpot": "vllm:request_time_per_output_token_seconds_bucket",
    "itl": "vllm:inter_token_latency_seconds_bucket",
    "e2e": "vllm:e2e_request_latency_seconds_bucket",
}


def _buckets(path: Path, family: str) -> dict[str, float]:
    """le → cumulative count, read with prometheus_client's parser (not ours)."""
    return {
        s.labels["le"]: float(s.value)
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
        if s.name == family
    }


def test_latency_quantiles_of_real_windows_equal_promql_over_the_bucket_increases(
    promtool: str, tmp_path: Path
) -> None:
    cases: list[Case] = []
    ours: list[float | None] = []
    for first, last in WINDOWS:
        snapshots = [
            build_snapshot(PARSER.parse((FIXTURES / n).read_text()).samples, 10.0 * i)
            for i, n in enumerate((first, last))
        ]
        (model,) = compute_stats(snapshots, AnalysisConfig()).models
        for metric, family in FAMILIES.items():
            before, after = _buckets(FIXTURES / first, family), _buckets(FIXTURES / last, family)
            deltas = tuple((le, after[le] - before.get(le, 0.0)) for le in after)
            quantiles = model.latency[metric].as_dict()
            for q, key in zip(QUANTILES, ("p50", "p90", "p95", "p99"), strict=True):
                cases.append(Case(q, deltas))
                ours.append(quantiles[key])
    theirs = promql_answers(promtool, cases, tmp_path)
    assert any(value is not None for value in ours), "the real windows must hold observations"
    for case, mine, promql in zip(cases, ours, theirs, strict=True):
        assert promql is not None
        if math.isnan(promql):
            assert mine is None, case
        else:
            assert mine == pytest.approx(promql, rel=1e-9), case
