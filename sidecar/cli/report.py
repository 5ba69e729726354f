"""Stats → the `report` command's human tables (its JSON object is :mod:`sidecar.core.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from sidecar.cli.terminal_text import VERDICT_STYLE, plain
from sidecar.core.catalog import LATENCY_METRICS
from sidecar.core.figures import count, fixed
from sidecar.core.measured_speedup import MeasuredSpeedup
from sidecar.core.report import BucketSummary, threshold_in_force
from sidecar.core.right_size_k import for_model
from sidecar.core.speedup_words import FINDING_WORDS, breakeven_words, caveat, e2e_words, expected_words, measured_words
from sidecar.core.stats import ModelStats, Stats
from sidecar.core.verdict import Thresholds, verdict


def bucket_window_words(seconds: float | None) -> str:
    """How far back the tap's buckets reach, as a reader would say it: "its last 5 min"."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return "over its --bucket-window, which that sidecar does not report"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"its last {int(seconds // size)} {unit}"
    return f"its last {seconds:g} s"


def render_buckets(
    summaries: Sequence[BucketSummary], thresholds: Thresholds, console: Console, window_seconds: float | None = None
) -> None:
    """Per temperature bucket over the tap's window: share of requests, acceptance, P10/P50/P90, verdict."""
    title = f"per temperature bucket (requests seen by the tap, {bucket_window_words(window_seconds)})"
    table = Table(title=title, title_justify="left")
    for column in ("model", "bucket", "requests", "share", "acceptance", "P10", "P50", "P90", "verdict"):
        table.add_column(column, justify="left" if column in {"model", "bucket"} else "right")
    totals: dict[str, int] = {}
    for b in summaries:
        totals[b.model_name] = totals.get(b.model_name, 0) + b.window_requests
    for b in summaries:
        total = totals[b.model_name]
        judged = verdict(b.acceptance, float(b.window_draft_tokens), True, thresholds).value
        table.add_row(
            plain(b.model_name), plain(b.bucket), str(b.window_requests),
            f"{b.window_requests / total:.0%}" if total else "—",
            fixed(b.acceptance), fixed(b.p10), fixed(b.p50), fixed(b.p90), f"[{VERDICT_STYLE[judged]}]{judged}[/]",
        )  # fmt: skip
    console.print(table)


def render(
    stats: Stats,
    console: Console,
    title: str,
    measured: Mapping[str, MeasuredSpeedup | None] | None = None,
    threshold: float = 0.5,
    *,
    schedules: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    if not stats.models:
        console.print(Panel("No engine metrics found in the source.", title=plain(title), style="red"))
        return
    for m in stats.models:
        summary = _summary_table(m, (measured or {}).get(m.model_name), threshold, measured is not None)
        schedule = (schedules or {}).get(m.model_name)
        if schedule is not None:
            summary.add_row("load schedule", plain(schedule_words(schedule)))
        console.print(Panel(Group(summary, _latency_table(m)), title=plain(f"{title}: {m.model_name or '?'}")))


def _summary_table(m: ModelStats, measured: MeasuredSpeedup | None, threshold: float, live: bool) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    verdict = m.verdict.value
    table.add_row("verdict", f"[{VERDICT_STYLE[verdict]}]{verdict}[/]")
    if m.invalid is not None:
        table.add_row("invalid", plain(f"{m.invalid}: {m.invalid_detail or ''}"))  # label values from the engine
    table.add_row("speculation", "on" if m.speculation else "off")
    table.add_row("acceptance ratio", fixed(m.acceptance_ratio))
    table.add_row("mean acceptance length", fixed(m.mean_acceptance_length))
    table.add_row("α̂ (position 0)", fixed(m.alpha_estimate))
    table.add_row("k", "—" if m.num_speculative_tokens is None else str(m.num_speculative_tokens))
    table.add_row("per position", " ".join(fixed(v, 2) for v in m.position_acceptance) or "—")
    table.add_row("break-even L (modelled)", fixed(m.breakeven_acceptance_length))
    table.add_row("expected speedup", plain(expected_words(m.expected_speedup, m.draft_cost)))
    if live:
        table.add_row("measured speedup", plain(measured_words(measured)))
        table.add_row("measured break-even", plain(breakeven_words(measured)))
        table.add_row("measured e2e", plain(e2e_words(measured)))
    else:
        table.add_row("measured speedup", "needs a running sidecar (TPOT with speculation on and off over time)")
    note = caveat(
        m.expected_speedup, m.acceptance_ratio, threshold_in_force(measured, threshold), m.draft_cost, measured
    )
    if note is not None:
        table.add_row("why", plain(note))
    size = for_model(m, measured)
    if size is not None:
        table.add_row("right-sized K", plain(size.words))
    table.add_row(
        "window drafts / draft / accepted",
        f"{count(m.drafts)} / {count(m.draft_tokens)} / {count(m.accepted_tokens)}",
    )
    table.add_row("KV cache usage", fixed(m.kv_cache_usage, 2))
    if not m.comparable:
        table.add_row("note", "legacy V0 engine: its acceptance counts are not comparable with V1's")
    return table


def schedule_words(schedule: Mapping[str, Any]) -> str:
    """A ``load_schedule`` object (sidecar.core.load_schedule.SchedulePlan.as_json) in one line: the proposal,
    then each load band's speedup and verdict."""
    bands = "; ".join(
        f"{b.get('band')}: {fixed(b.get('speedup'), 2)} {b.get('verdict')} ({b.get('source')})"
        for b in schedule.get("bands", [])
        if isinstance(b, Mapping)
    )
    words = str(schedule.get("words") or "")
    return f"{words}. Bands: {bands}" if bands else words


def _latency_table(m: ModelStats) -> Table:
    table = Table(title="latency (seconds)", title_justify="left")
    for column in ("metric", "P50", "P90", "P95", "P99", "P99/P50"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for metric in LATENCY_METRICS:
        q = m.latency.get(metric)
        if q is None:
            table.add_row(metric, "—", "—", "—", "—", "—")
            continue
        table.add_row(
            metric,
            fixed(q.p50, 4),
            fixed(q.p90, 4),
            fixed(q.p95, 4),
            fixed(q.p99, 4),
            fixed(q.p99_p50_ratio, 2),
        )
    return table


def render_measured(measured: Mapping[str, Mapping[str, Any]], console: Console, source: str) -> None:
    """The speedup a running sidecar measured (its /api/report's ``measured_speedup``), one row per model."""
    table = Table(
        title=f"measured by the sidecar at {plain(source)} (TPOT off / on, matched load)", title_justify="left"
    )
    columns = ("model", "speedup", "95 % interval", "finding", "windows on / off", "break-even acceptance", "in force")
    for column in columns:
        table.add_column(column, justify="left" if column in {"model", "finding"} else "right")
    for model, m in measured.items():
        low, high = m.get("low"), m.get("high")
        interval = f"{fixed(low)}-{fixed(high)}"
        in_force = "yes" if m.get("in_force") else plain(f"no: {m.get('evidence_needed') or '?'}")
        finding = FINDING_WORDS.get(str(m.get("finding")), "—")  # an older sidecar sends none
        table.add_row(
            plain(model), fixed(m.get("speedup")), interval, finding, f"{m.get('on_windows')} / {m.get('off_windows')}",
            fixed(m.get("breakeven_acceptance_ratio"), 2), in_force,
        )  # fmt: skip
    console.print(table)
