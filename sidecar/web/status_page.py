"""GET /status: one self-contained HTML page (inline CSS and SVG, no external assets) for people.

It shows, per model, the current verdict and the decision framework's recommendation, acceptance over the last
hour as a line chart with the threshold lines, the tap's per-temperature-bucket table, the actuator's state, the
decision history and the scrape health. In fleet mode it also shows the fleet's numbers (the Deployment's pods
summed, from Prometheus: what the controller decides on) next to this pod's, or, on a replica that does not
hold the Lease, who does. This module is the pure half: ``render_status`` takes a StatusPage and returns a
string; :mod:`sidecar.web.status_data` gathers the StatusPage from a running sidecar and serves it. Every
value that comes from outside (model names, bucket labels, reasons, URLs) goes through ``html.escape``: model
names are user input.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sidecar.core import right_size_k
from sidecar.core.advice import Advice, Status
from sidecar.core.figures import count, fixed, percent
from sidecar.core.load_schedule import SchedulePlan, ScheduleSource
from sidecar.core.measured_speedup import MeasuredSpeedup, SpeedSample
from sidecar.core.speedup_words import breakeven_words, caveat, e2e_words, expected_words, measured_words
from sidecar.core.stats import ModelStats
from sidecar.core.verdict import Thresholds
from sidecar.scrape.monitor import TREND_SECONDS, TrendPoint

REFRESH_SECONDS = 10
MIN_CHART_SECONDS = 60.0
PALETTE = ("#2563eb", "#9333ea", "#0891b2", "#ea580c", "#4d7c0f", "#be185d")
VERDICT_COLOUR = {
    "keep": "#15803d",
    "borderline": "#b45309",
    "disable": "#b91c1c",
    "no-data": "#6b7280",
    "invalid": "#7c3aed",
}
STATUS_COLOUR = {Status.OK: "#15803d", Status.WARN: "#b45309", Status.BAD: "#b91c1c", Status.UNKNOWN: "#6b7280"}


class DecisionLike(Protocol):
    @property
    def at(self) -> float: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...


@dataclass(frozen=True)
class ActuatorState:
    target: str  # e.g. "deployment default/vllm" or "file deploy/vllm.yaml"
    speculation: bool | None  # configured on the target right now; None when unknown
    state: str  # the decision state, e.g. "on", "off", "tripping", "cooldown", "pinned"
    detail: str = ""


@dataclass(frozen=True)
class BucketRow:
    model_name: str
    bucket: str
    requests: int  # in the tap's window
    share: float  # of the model's requests in the window
    acceptance: float | None
    p10: float | None
    p50: float | None
    p90: float | None
    verdict: str


@dataclass(frozen=True)
class Health:
    vllm_url: str
    target_up: bool
    last_scrape_result: str | None
    last_scrape_detail: str
    last_success_at: float | None
    scrapes: dict[str, int] = field(default_factory=dict)


Ratios = Mapping[str, Mapping[str, float | None]]  # model -> latency metric -> P99/P50
# The metrics whose P99/P50 the divergence rule compares with a baseline (sidecar.core.policy, by default).
DIVERGENCE_METRICS = ("tpot", "e2e")


@dataclass(frozen=True)
class FleetPanel:
    """Fleet mode: the Deployment's numbers from Prometheus, which the controller decides on."""

    source: str  # the Prometheus URL and the selector
    querying: bool  # False: this replica does not hold the Lease and asks Prometheus nothing
    lease_holder: str | None
    last_result: str | None
    last_detail: str
    window_seconds: float | None
    models: tuple[ModelStats, ...]
    baseline: Ratios  # the fleet's P99/P50 baseline, configured or learned from the fleet
    pod_baseline: Ratios  # this pod's, for the column next to it


@dataclass(frozen=True)
class StatusPage:
    now: float
    health: Health
    thresholds: Thresholds
    models: tuple[ModelStats, ...]
    advice: tuple[Advice, ...]
    trend: tuple[TrendPoint, ...]
    buckets: tuple[BucketRow, ...] | None  # None: no tap recorder in this sidecar
    actuator: ActuatorState | None
    decisions: tuple[DecisionLike, ...]
    fleet: FleetPanel | None = None  # None: not in fleet mode
    # The speedup measured from this engine's TPOT per model (None: no load band with both states yet).
    measured: Mapping[str, MeasuredSpeedup | None] = field(default_factory=dict)
    speed_samples: Mapping[str, Sequence[SpeedSample]] = field(default_factory=dict)  # windows learned so far
    # The load schedule of K proposed per model (sidecar.core.load_schedule); None with speculation off.
    schedules: Mapping[str, SchedulePlan | None] = field(default_factory=dict)


# --- rendering (pure) -------------------------------------------------------------------------------------


def render_status(page: StatusPage) -> str:
    body = "\n".join(
        (
            _header(page),
            _models_section(page),
            _fleet_section(page),
            _chart_section(page),
            _buckets_section(page),
            _advice_section(page),
            _actuator_section(page),
            _decisions_section(page),
            _health_section(page),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>spec-sidecar status</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:16px 24px;color:#111827;background:#f9fafb}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.muted{color:#6b7280}.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 16px;margin:8px 0}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;
text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums}.badge{display:inline-block;padding:2px 10px;border-radius:999px;color:#fff;
font-weight:600}.big{font-size:20px}.models{display:flex;flex-wrap:wrap;gap:12px}.models .card{flex:1 1 320px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}dt{color:#6b7280}dd{margin:0}
svg text{font:11px system-ui,sans-serif;fill:#374151}
"""


def _header(page: StatusPage) -> str:
    stamp = _utc(page.now)
    return (
        f'<h1>spec-sidecar</h1><div class="muted">engine {_e(page.health.vllm_url)} · {stamp} UTC · '
        f"refreshes every {REFRESH_SECONDS} s</div>"
    )


def _models_section(page: StatusPage) -> str:
    # In fleet mode the controller does not decide on these: say whose numbers they are.
    title = "<h2>This pod's engine (not what the controller decides on)</h2>" if page.fleet else "<h2>Verdict</h2>"
    if not page.models:
        return title + '<div class="card muted">No engine metrics yet: waiting for a good scrape.</div>'
    cards = []
    advice = {a.model_name: a.recommendation.value for a in page.advice}
    for m in page.models:
        rows: tuple[tuple[str, str], ...] = (
            ("recommendation", advice.get(m.model_name, "—")),
            ("speculation", "on" if m.speculation else "off"),
            ("acceptance ratio", fixed(m.acceptance_ratio)),
            ("mean acceptance length", fixed(m.mean_acceptance_length, 2)),
            ("draft tokens (window)", count(m.draft_tokens)),
            ("KV cache usage", percent(m.kv_cache_usage)),
            *_speedup_rows(
                m,
                page.measured.get(m.model_name),
                page.thresholds.disable_below,
                page.speed_samples.get(m.model_name, ()),
            ),
        )
        plan = page.schedules.get(m.model_name)
        if plan is not None:
            rows = (*rows, ("load schedule", plan.words), *_band_rows(plan))
        if m.invalid is not None:  # impossible numbers: say which, since no number is shown
            rows = (*rows, ("invalid window", f"{m.invalid}: {m.invalid_detail or ''}"))
        details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
        cards.append(
            f'<div class="card"><div class="big"><b>{_e(m.model_name or "?")}</b> {_verdict_badge(m.verdict.value)}'
            f"</div><dl>{details}</dl></div>"
        )
    return f'{title}<div class="models">{"".join(cards)}</div>'


def _band_rows(plan: SchedulePlan) -> tuple[tuple[str, str], ...]:
    """One row per load band with a verdict: the speedup there and where it comes from."""
    rows = []
    for band in plan.bands:
        if band.speedup is None:
            continue
        interval = (
            f", 95 % {band.low_speedup:.2f}-{band.high_speedup:.2f}" if band.source is ScheduleSource.MEASURED else ""
        )
        rows.append(
            (f"batch size {band.label}", f"{band.verdict}: speedup {band.speedup:.2f}{interval} ({band.source})")
        )
    return tuple(rows)


def _speedup_rows(
    m: ModelStats, measured: MeasuredSpeedup | None, threshold: float, samples: Sequence[SpeedSample]
) -> tuple[tuple[str, str], ...]:
    """Modelled speedup with its footing, measured speedup and break-even, and why a gain sits beside a disable."""
    in_force = measured.policy_threshold if measured is not None else None
    rows: tuple[tuple[str, str], ...] = (
        ("expected speedup", expected_words(m.expected_speedup, m.draft_cost)),
        ("measured speedup", measured_words(measured, samples)),
        ("measured break-even", breakeven_words(measured)),
        ("measured e2e", e2e_words(measured)),
        (
            "policy judges against",
            f"{in_force:.2f} (measured)" if in_force is not None else f"{threshold:.2f} (--threshold)",
        ),
    )
    size = right_size_k.for_model(m, measured)
    if size is not None:
        rows = (*rows, ("right-sized K", size.words))
    why = caveat(m.expected_speedup, m.acceptance_ratio, in_force or threshold, m.draft_cost, measured)
    return (*rows, ("why", why)) if why is not None else rows


def _fleet_section(page: StatusPage) -> str:
    f = page.fleet
    if f is None:
        return ""
    window = f" over {f.window_seconds:g} s" if f.window_seconds else ""
    head = (
        "<h2>Fleet: what the controller decides on</h2>"
        f'<div class="muted">The Deployment\'s pods summed{window}, from {_e(f.source)}.</div>'
    )
    if not f.querying:
        holder = f.lease_holder or "the Lease holder"
        return head + (
            f'<div class="card muted">This replica does not hold the Lease, so it does not query Prometheus and '
            f"has no fleet numbers: {_e(holder)} does (see its /status).</div>"
        )
    if not f.models:
        last = f"the last round: {f.last_result} {f.last_detail}".strip() if f.last_result else "no round yet"
        return head + f'<div class="card muted">No fleet numbers ({_e(last)}): nothing is decided.</div>'
    pods = {m.model_name: m for m in page.models}
    return head + "".join(_fleet_table(m, pods.get(m.model_name), f) for m in f.models)


Cell = Callable[[ModelStats, Ratios], str]  # a model's numbers and its baseline -> the cell's text


def _fleet_table(fleet: ModelStats, pod: ModelStats | None, panel: FleetPanel) -> str:
    """One model: the fleet's numbers (which the controller decides on) beside this pod's, row by row."""

    def both(cell: Cell) -> str:
        mine = cell(pod, panel.pod_baseline) if pod is not None else "—"
        return f'<td class="num">{cell(fleet, panel.baseline)}</td><td class="num">{mine}</td>'

    rows: list[tuple[str, Cell]] = [
        ("verdict", lambda m, _: _verdict_badge(m.verdict.value)),
        ("speculation", lambda m, _: "on" if m.speculation else "off"),
        ("acceptance ratio", lambda m, _: fixed(m.acceptance_ratio)),
        ("mean acceptance length", lambda m, _: fixed(m.mean_acceptance_length, 2)),
        ("draft tokens (window)", lambda m, _: count(m.draft_tokens)),
    ]
    rows += [(f"{metric.upper()} P99/P50 (baseline)", _ratio_cell(metric)) for metric in DIVERGENCE_METRICS]
    body = "".join(f"<tr><td>{_e(label)}</td>{both(cell)}</tr>" for label, cell in rows)
    head = f"<tr><th>{_e(fleet.model_name or '?')}</th><th>fleet (decides)</th><th>this pod</th></tr>"
    return f'<div class="card"><table class="fleet"><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def _ratio_cell(metric: str) -> Cell:
    def cell(m: ModelStats, baseline: Ratios) -> str:
        return f"{fixed(m.p99_p50_ratio.get(metric), 2)} ({fixed(baseline.get(m.model_name, {}).get(metric), 2)})"

    return cell


def _verdict_badge(value: str) -> str:
    return f'<span class="badge" style="background:{VERDICT_COLOUR.get(value, "#6b7280")}">{_e(value)}</span>'


def _chart_section(page: StatusPage) -> str:
    chart = acceptance_chart(page.trend, page.thresholds, page.now)
    return f'<h2>Acceptance, last hour</h2><div class="card">{chart}</div>'


def acceptance_chart(trend: Sequence[TrendPoint], thresholds: Thresholds, now: float) -> str:
    """An inline SVG line chart: x = up to the last TREND_SECONDS, y = acceptance 0..1, with the verdict lines."""
    width, height, left, right, top, bottom = 1080, 260, 44, 150, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    # Up to an hour, but no more than the sidecar has seen: a young sidecar's line is not squeezed into a corner.
    oldest = min((p.at for p in trend), default=now - TREND_SECONDS)
    span = max(MIN_CHART_SECONDS, min(TREND_SECONDS, now - oldest))
    start = now - span

    def x(at: float) -> float:
        return left + max(0.0, min(1.0, (at - start) / span)) * plot_w

    def y(value: float) -> float:
        return top + (1.0 - max(0.0, min(1.0, value))) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="acceptance ratio over the last hour">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#d1d5db"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#f3f4f6"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for quarter in (4, 3, 2, 1, 0):
        ago = span * quarter / 4
        parts.append(f'<text x="{x(now - ago):.1f}" y="{height - 8}" text-anchor="middle">{_ago(ago)}</text>')
    for value, colour, label in (
        (thresholds.disable_below, "#dc2626", f"disable below {thresholds.disable_below:g}"),
        (thresholds.keep_from, "#16a34a", f"keep from {thresholds.keep_from:g}"),
    ):
        parts.append(
            f'<line class="threshold" x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(f'<text x="{left + plot_w + 6}" y="{y(value) + 4:.1f}" style="fill:{colour}">{_e(label)}</text>')
    series = _series(trend)
    if not any(v is not None for points in series.values() for _, v in points):
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle">'
            "no acceptance measured in the last hour</text>"
        )
    for index, (model, points) in enumerate(sorted(series.items())):
        colour = PALETTE[index % len(PALETTE)]
        parts.extend(_polylines(points, colour, x, y))
        parts.append(
            f'<text x="{left + 8}" y="{top + 16 + 14 * index}" style="fill:{colour};font-weight:600">'
            f"{_e(model or '?')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "now"
    return f"-{seconds / 60:.0f} min" if seconds >= 120 else f"-{seconds:.0f} s"


def _series(trend: Sequence[TrendPoint]) -> dict[str, list[tuple[float, float | None]]]:
    series: dict[str, list[tuple[float, float | None]]] = {}
    for point in trend:
        series.setdefault(point.model_name, []).append((point.at, point.acceptance_ratio))
    return series


def _polylines(
    points: Sequence[tuple[float, float | None]], colour: str, x: Callable[[float], float], y: Callable[[float], float]
) -> list[str]:
    """One polyline per run of known values: an unknown value is a gap in the line, never a drop to 0."""
    runs: list[list[tuple[float, float]]] = [[]]
    for at, value in points:
        if value is None or not math.isfinite(value):
            runs.append([])
        else:
            runs[-1].append((at, value))
    out = []
    for run in filter(None, runs):
        if len(run) == 1:
            at, value = run[0]
            out.append(f'<circle class="series" cx="{x(at):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"/>')
            continue
        coords = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in run)
        out.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
    return out


def _buckets_section(page: StatusPage) -> str:
    title = "<h2>By temperature (the tap)</h2>"
    if page.buckets is None:
        return title + '<div class="card muted">The request tap is not running in this sidecar.</div>'
    if not page.buckets:
        return title + '<div class="card muted">No requests through the tap yet.</div>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("model", "temperature", "requests", "share", "acceptance", "P10", "P50", "P90", "verdict")
    )
    rows = []
    for b in page.buckets:
        cells = (
            f'<td>{_e(b.model_name)}</td><td>{_e(b.bucket)}</td><td class="num">{b.requests}</td>'
            f'<td class="num">{percent(b.share)}</td><td class="num">{fixed(b.acceptance)}</td>'
            f'<td class="num">{fixed(b.p10)}</td><td class="num">{fixed(b.p50)}</td><td class="num">{fixed(b.p90)}</td>'
            f"<td>{_verdict_badge(b.verdict)}</td>"
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _advice_section(page: StatusPage) -> str:
    if not page.advice:
        return ""
    blocks = []
    for a in page.advice:
        findings = "".join(
            f'<tr><td>{_e(f.condition.value)}</td><td><span class="badge" style="background:'
            f'{STATUS_COLOUR[f.status]}">{_e(f.status.value)}</span></td><td>{_e(f.says)}</td></tr>'
            for f in a.findings
        )
        reasons = "".join(f"<li>{_e(r)}</li>" for r in a.reasons)
        blocks.append(
            f'<div class="card"><div class="big">{_e(a.model_name or "?")}: <b>{_e(a.recommendation.value)}</b></div>'
            f"<ul>{reasons}</ul><table><thead><tr><th>condition</th><th>status</th><th>what the data says</th></tr>"
            f"</thead><tbody>{findings}</tbody></table></div>"
        )
    return "<h2>What to do</h2>" + "".join(blocks)


def _actuator_section(page: StatusPage) -> str:
    a = page.actuator
    if a is None:
        return '<h2>Actuator</h2><div class="card">actuator: not configured</div>'
    speculation = "unknown" if a.speculation is None else ("on" if a.speculation else "off")
    rows = (("target", a.target), ("speculation", speculation), ("state", a.state), ("detail", a.detail or "—"))
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<h2>Actuator</h2><div class="card"><dl>{details}</dl></div>'


def _decisions_section(page: StatusPage) -> str:
    title = "<h2>Decision history</h2>"
    if not page.decisions:
        return title + '<div class="card muted">No decisions yet.</div>'
    rows = "".join(
        f"<tr><td>{_utc(d.at)}</td><td>{_e(str(d.action))}</td><td>{_e(str(d.reason))}</td><td>{_e(d.detail)}</td>"
        f"<td>{_e(getattr(d, 'outcome', '') or '—')}</td></tr>"
        for d in sorted(page.decisions, key=lambda d: d.at, reverse=True)
    )
    head = "<tr><th>time (UTC)</th><th>action</th><th>reason</th><th>detail</th><th>outcome</th></tr>"
    return f"{title}<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _health_section(page: StatusPage) -> str:
    h = page.health
    last = (
        "never"
        if h.last_success_at is None
        else f"{_utc(h.last_success_at)} ({page.now - h.last_success_at:.0f} s ago)"
    )
    scrapes = ", ".join(f"{k} {v}" for k, v in sorted(h.scrapes.items())) or "none yet"
    rows = (
        ("target up", "yes" if h.target_up else "no"),
        ("last scrape", f"{h.last_scrape_result or '—'} {h.last_scrape_detail}".strip()),
        ("last good scrape", last),
        ("scrapes", scrapes),
    )
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<h2>Health</h2><div class="card"><dl>{details}</dl></div>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
