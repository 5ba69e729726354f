"""Fuzzing the whole measuring path: exposition text → parser → snapshot → window → stats → policy → exporter.

Scrapes are generated from a model of a vLLM V1 engine under traffic (every step adds drafts, draft tokens,
accepted tokens and accepted per position as vLLM does; engines restart; latency histograms grow), then
corrupted the ways the fault campaign did: negative, NaN and infinite values, accepted above drafted, a
position above drafts, histograms that are not cumulative or miscounted, junk lines. Properties:

- nothing raises, anywhere on the path;
- a window holding an impossible value is invalid; one with no corruption (and restarts the engine marks with
  ``_created``) is valid;
- no verdict, no decision and no exported ratio from an invalid window; a verdict only from ratios in 0-1;
- every exported gauge is finite;
- our parser and prometheus_client's agree, sample for sample, on every line both accept.

Bounded and reproducible for CI: derandomized (the same examples every run), a fixed number of examples each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.policy import Action, PolicyConfig, PolicyState, Reason, decide, observation_from_stats
from sidecar.core.verdict import Verdict
from sidecar.scrape.collector import ScrapeCollector
from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.scrape.monitor import Monitor
from sidecar.settings import Settings

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FIND = settings(max_examples=2000, deadline=None, derandomize=True, database=None)
WANTED = sorted(wanted_sample_names())
PARSER = SampleParser(WANTED, openmetrics_aliases(frozenset(WANTED)))
SPEC = "vllm:spec_decode_num_"
BOUNDS = ("0.1", "1.0", "+Inf")
# Corruptions no engine can write; each must make every window that holds it invalid.
IMPOSSIBLE = (
    "negative",
    "nan",
    "inf",
    "-inf",
    "accepted_above_drafted",
    "position_above_drafts",
    "not_cumulative",
    "count_mismatch",
    "bucket_nan",
)


@dataclass
class EngineState:
    """The cumulative counters of one engine (one data-parallel rank), as it would expose them."""

    k: int
    drafts: float = 0.0
    tokens: float = 0.0
    accepted: float = 0.0
    per_pos: list[float] = field(default_factory=list)
    buckets: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    created: float = 1_700_000_000.0

    def values(self) -> dict[str, Any]:
        return {
            "drafts": self.drafts,
            "tokens": self.tokens,
            "accepted": self.accepted,
            "per_pos": list(self.per_pos),
            "buckets": list(self.buckets),
            "count": self.buckets[-1],
        }


@dataclass
class Scrape:
    text: str
    corrupted: str | None  # which impossible value was written into it, if any


def render(engines: list[tuple[str, dict[str, Any], float | None]], junk: list[str]) -> str:
    lines = ["# HELP vllm:num_requests_running Number of requests.", "# TYPE vllm:num_requests_running gauge"]
    for engine, v, created in engines:
        labels = f'engine="{engine}",model_name="tiny"'
        lines.append(f"vllm:num_requests_running{{{labels}}} 1.0")
        for name, value in (("drafts", v["drafts"]), ("draft_tokens", v["tokens"]), ("accepted_tokens", v["accepted"])):
            lines += [f"# TYPE {SPEC}{name} counter", f"{SPEC}{name}_total{{{labels}}} {_num(value)}"]
            if created is not None:
                lines.append(f"{SPEC}{name}_created{{{labels}}} {created}")
        for position, value in enumerate(v["per_pos"]):
            lines.append(f'{SPEC}accepted_tokens_per_pos_total{{{labels},position="{position}"}} {_num(value)}')
        for le, count in zip(BOUNDS, v["buckets"], strict=True):
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {_num(count)}')
        lines.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {_num(v['count'])}")
    for i, line in enumerate(junk):
        lines.insert(1 + (7 * i) % len(lines), line)
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def corrupt(v: dict[str, Any], kind: str) -> None:
    """Write one impossible value into an engine's numbers."""
    bad = {"negative": -(v["accepted"] + 37.0), "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    if kind in bad:
        v["accepted"] = bad[kind]
    elif kind == "accepted_above_drafted":
        v["accepted"] = 3 * v["tokens"] + 1
    elif kind == "position_above_drafts":
        v["per_pos"][0] = v["drafts"] + 1
    elif kind == "not_cumulative":
        v["buckets"][0] = v["buckets"][1] + 1
    elif kind == "count_mismatch":
        v["count"] = v["buckets"][-1] + 1
    elif kind == "bucket_nan":
        v["buckets"][1] = math.nan


# Lines that never add a sample: comments, families nobody reads, and wanted names with an unclosed label set.
JUNK = st.one_of(
    st.text(st.characters(blacklist_characters="\n\r"), max_size=30).map(lambda t: "# " + t),
    st.text(st.characters(blacklist_characters="\n\r}"), max_size=30).map(lambda t: f"zz_unread{{{t}"),
    st.builds(lambda n, t: f"{n}{{{t}", st.sampled_from(WANTED), st.text(st.characters(blacklist_characters="\n\r}"))),
    st.sampled_from(["", "   ", "\t", "# TYPE x counter", "# EOF"]),
)


@st.composite
def scrapes(draw: st.DrawFn) -> tuple[list[Scrape], bool]:
    """A few scrapes of one or two engines; returns them and whether every restart is marked by _created."""
    k = draw(st.integers(1, 4))
    with_created = draw(st.booleans())
    engines = [EngineState(k, per_pos=[0.0] * k) for _ in range(draw(st.integers(1, 2)))]
    out: list[Scrape] = []
    restarted_unmarked = False
    for _step in range(draw(st.integers(2, 7))):
        rendered: list[tuple[str, dict[str, Any], float | None]] = []
        corrupted: str | None = None
        for index in range(len(engines)):
            if draw(st.integers(0, 9)) == 0:  # an engine restart: every counter of the series back to 0
                engines[index] = EngineState(k, per_pos=[0.0] * k, created=engines[index].created + 100.0)
                restarted_unmarked |= not with_created
            e = engines[index]
            n = draw(st.integers(0, 60))
            at: list[int] = []
            for _ in range(k):
                at.append(draw(st.integers(0, at[-1] if at else n)))
            accepted = sum(at)
            tokens = draw(st.integers(max(n, accepted), n * k)) if n else 0
            e.drafts, e.tokens, e.accepted = e.drafts + n, e.tokens + tokens, e.accepted + accepted
            e.per_pos = [p + a for p, a in zip(e.per_pos, at, strict=True)]
            grown = [draw(st.integers(0, 20)) for _ in BOUNDS]
            e.buckets = [b + sum(grown[: i + 1]) for i, b in enumerate(e.buckets)]
            values = e.values()
            if corrupted is None and draw(st.integers(0, 5)) == 0:
                corrupted = draw(st.sampled_from(IMPOSSIBLE))
                corrupt(values, corrupted)
            rendered.append((str(index), values, e.created if with_created else None))
        out.append(Scrape(render(rendered, draw(st.lists(JUNK, max_size=3))), corrupted))
    return out, not restarted_unmarked


POLICY = PolicyConfig(
    evidence_z=0.0,
    min_draft_tokens=1.0,
    trip_windows=1,
    window_seconds=10.0,
    cooldown=0.0,
    manual_grace=0.0,
    flap_budget=1000,
)  # fmt: skip  -- acts on the first low window: any number taken at face value would show as an action


def exported(monitor: Monitor) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(lambda: monitor.view, stale_after=1e9))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@FUZZ
@given(scrapes())
def test_no_verdict_decision_or_exported_ratio_ever_comes_from_impossible_numbers(
    generated: tuple[list[Scrape], bool],
) -> None:
    history, restarts_marked = generated
    monitor = Monitor(Settings(window=1e9, min_draft_tokens=1))  # every scrape stays in the window
    state = PolicyState(speculation=True)
    for step, scrape in enumerate(history):
        snapshot, _bad, _examples = parse_payload(scrape.text, 10.0 * step)
        view = monitor.observe(ScrapeResult("success", snapshot, 0.0), 10.0 * step)
        assert view.stats is not None
        (model,) = view.stats.models
        corrupted = [s.corrupted for s in history[: step + 1] if s.corrupted]
        if step > 0 and corrupted:
            assert model.verdict is Verdict.INVALID, (corrupted, model)
        if not corrupted and restarts_marked:
            assert model.invalid is None, (model.invalid, model.invalid_detail)
        if model.invalid is None and model.verdict is not Verdict.NO_DATA:
            ratio = model.acceptance_ratio
            assert ratio is not None and 0.0 <= ratio <= 1.0
        observation = observation_from_stats(model, engine_up=True, window_seconds=10.0)
        decision = decide(observation, state, POLICY, now=10.0 * (step + 1))
        if model.invalid is not None:
            assert decision.action is Action.NONE
            # (With speculation off since an earlier valid low window, the hold says that instead.)
            assert decision.reason is (Reason.INVALID_WINDOW if state.speculation else Reason.SPECULATION_OFF)
        if decision.action is Action.DISABLE:
            assert model.invalid is None and model.acceptance_ratio is not None and model.acceptance_ratio < 0.5
        # A toggle rolls out at once here, so the next window is judged afresh; a disable leaves the record of
        # what was removed, as the actuator writes it (the engine stand-in here keeps its counters).
        if decision.toggles:
            record = decision.state.record
            if not decision.state.speculation:
                record = replace(record, removed={"version": 2, "edits": []})
            state = PolicyState(decision.state.speculation, True, record)
        else:
            state = decision.state
        metrics = exported(monitor)
        for name, samples in metrics.items():
            for _labels, value in samples:
                assert math.isfinite(value), (name, value)
        ratios = [v for _, v in metrics.get("specdecode_acceptance_ratio", [])]
        assert (ratios == []) if model.invalid is not None else all(0.0 <= r <= 1.0 for r in ratios)
        for _labels, value in metrics.get("specdecode_position_acceptance_ratio", []):
            assert 0.0 <= value <= 1.0


def _acts_on_valid_and_holds_on_invalid(generated: tuple[list[Scrape], bool]) -> bool:
    history, _ = generated
    snapshots = [parse_payload(s.text, 10.0 * i)[0] for i, s in enumerate(history)]
    monitor = Monitor(Settings(window=1e9, min_draft_tokens=1))
    seen = set()
    for i, snapshot in enumerate(snapshots):
        view = monitor.observe(ScrapeResult("success", snapshot, 0.0), 10.0 * i)
        assert view.stats is not None
        model = view.stats.models[0]
        obs = observation_from_stats(model, engine_up=True, window_seconds=10.0)
        seen.add((model.invalid is not None, decide(obs, PolicyState(True), POLICY, 10.0 * (i + 1)).action))
    return {(False, Action.DISABLE), (True, Action.NONE)} <= seen


def test_the_generated_histories_hold_both_low_windows_that_disable_and_invalid_ones() -> None:
    # Without this the property above could pass on histories where nothing would ever act.
    find(scrapes(), _acts_on_valid_and_holds_on_invalid, settings=FIND)


# --- the parser against prometheus_client, line by line ---------------------------------------------------------

LABEL_VALUE = st.text(st.sampled_from(["a", "Z", "0", " ", ",", "=", "{", "}", '"', "\\", "n", "é", "\t"]), max_size=8)
VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "nan", "inf", "1e3", "-0", "0x10", "1_000", "١", ".5", "5.", "+1"]),
)


@st.composite
def sample_lines(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(WANTED))
    pairs = draw(st.lists(st.tuples(st.sampled_from(["model_name", "engine", "le", "position", "a_b"]), LABEL_VALUE)))
    blob = ",".join(f'{key}="{value}"' for key, value in pairs)
    space = draw(st.sampled_from([" ", "  ", "\t", " \t"]))
    labels = draw(st.sampled_from([f"{{{blob}}}", f"{{{blob},}}", f"{{ {blob} }}", ""])) if pairs else ""
    stamp = draw(st.sampled_from(["", " 1700000000000", " -5", " 1.5"]))
    line = f"{name}{labels}{space}{draw(VALUE)}{stamp}"
    if draw(st.booleans()):  # and a small corruption somewhere
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(['"', "\\", "{", "}", " ", "=", ",", "#", "x"])) + line[at:]
    return line


def _ref(line: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]] | None:
    try:
        families = list(text_string_to_metric_families(line + "\n"))
    except Exception:  # prometheus_client rejects the line: not one both accept
        return None
    return [(s.name, tuple(sorted(s.labels.items())), float(s.value)) for f in families for s in f.samples]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.lists(sample_lines(), min_size=1, max_size=5))
def test_our_parser_and_prometheus_clients_agree_on_every_line_both_accept(lines: list[str]) -> None:
    for line in lines:
        ours = PARSER.parse(line + "\n")
        reference = _ref(line)
        if reference is None or ours.bad_lines or len(ours.samples) != 1 or len(reference) != 1:
            continue
        (name, labels, value), mine = reference[0], ours.samples[0]
        assert (mine.name, mine.labels) == (name, labels), line
        assert _same(mine.value, value), line


def test_the_generated_lines_include_escaped_labels_both_parsers_accept() -> None:
    def both_with_escapes(line: str) -> bool:
        reference, ours = _ref(line), PARSER.parse(line + "\n")
        return "\\" in line and reference is not None and len(reference) == 1 and len(ours.samples) == 1

    find(sample_lines(), both_with_escapes, settings=FIND)
