"""What `make demo` prints, as pure functions of what it saw: a line per window, the phase table, the closing verdict.

The demo (scripts/demo.py) looks at the sidecar's /api/report every second and keeps each look as a
:class:`Sample`; it records every change of the manifest as a :class:`Toggle`. Everything printed about the run
is computed here from those two lists (and, at the end, the report's advice), so the words can be tested
without an engine (tests/unit/test_demo_view.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from sidecar.cli.terminal_text import VERDICT_STYLE
from sidecar.core.speedup_words import FINDING_WORDS
from sidecar.core.verdict import Thresholds

# The demo runs the sidecar with the default operating rule, so its lines are the defaults'.
RULE = Thresholds()
WINDOW_SECONDS = 15  # the demo's --window
REASONS = {
    "low_acceptance": f"acceptance below {RULE.disable_below:g}",
    "below_breakeven": "mean acceptance length below break-even",
    "latency_divergence": "P99/P50 diverged from the baseline without speculation",
}
# Recommendations of `spec-sidecar report` that mean "speculation should not serve (all of) this traffic".
TURN_OFF = {"disable", "disable for some traffic"}
KEEP_ON = {"keep", "keep but watch"}


@dataclass(frozen=True)
class Speed:
    """The sidecar's measured speedup as /api/report gives it (``measured_speedup``): TPOT with speculation off
    over TPOT with it on, from windows at the same load, with its 95 % interval."""

    speedup: float
    low: float
    high: float
    finding: str  # "slower" / "faster" with speculation (the whole interval on one side of 1) or "unclear"
    on_windows: int
    off_windows: int
    load_bands: tuple[str, ...]
    breakeven: float | None  # the acceptance ratio at which this engine breaks even, from its latency
    breakeven_low: float | None
    breakeven_high: float | None
    in_force: bool  # whether the measured break-even has replaced the fixed threshold in the policy
    evidence_needed: str | None


def speed_from_report(measured: Mapping[str, Any] | None) -> Speed | None:
    """``measured_speedup`` of one model of /api/report; None when it is null, absent or unreadable."""
    if not isinstance(measured, Mapping):
        return None
    try:
        interval = measured.get("breakeven_acceptance_interval") or [None, None]
        return Speed(
            speedup=float(measured["speedup"]),
            low=float(measured["low"]),
            high=float(measured["high"]),
            finding=str(measured["finding"]),
            on_windows=int(measured["on_windows"]),
            off_windows=int(measured["off_windows"]),
            load_bands=tuple(str(b) for b in measured.get("load_bands") or ()),
            breakeven=_number(measured.get("breakeven_acceptance_ratio")),
            breakeven_low=_number(interval[0]),
            breakeven_high=_number(interval[1]),
            in_force=measured.get("in_force") is True,
            evidence_needed=measured.get("evidence_needed"),
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Sample:
    """One look at the sidecar's /api/report: its window as it stood at ``at`` (wall clock)."""

    at: float
    phase: str
    engine_up: bool
    speculation: str | None  # "on" / "off" as the engine's metrics say; None while the engine is down
    acceptance: float | None
    mean_length: float | None
    draft_tokens: float | None
    verdict: str
    speed: Speed | None = None  # the sidecar's measured speedup as it stood; None: not measured (yet)

    @property
    def measured(self) -> bool:
        """A window with speculation on and an acceptance ratio: evidence the sidecar can act on."""
        return self.speculation == "on" and self.acceptance is not None


@dataclass(frozen=True)
class Toggle:
    """A change of the manifest's speculation args, by the sidecar (``by="sidecar"``) or a person."""

    at: float
    phase: str
    state: str  # "on" / "off": what the change set
    reason: str
    by: str


@dataclass(frozen=True)
class PhaseRow:
    phase: str
    speculation: str  # as it went during the phase: "on", "on → off", "off"
    evidence: Sample | None  # the window the row shows; None when nothing was measured in the phase
    note: str  # which window that is, or why there is none, and what the sidecar did
    acted: bool = False  # the sidecar turned speculation off during this phase
    speed: str = ""  # the measured speedup as it stood at the end of the phase, in words


def sample_from_report(report: Mapping[str, Any], phase: str, at: float) -> Sample:
    """/api/report's first model (the demo serves one) as a Sample; an empty report is an engine down."""
    models = report.get("models") or [{}]
    model: Mapping[str, Any] = models[0]
    window = model.get("window") or {}
    return Sample(
        at=at,
        phase=phase,
        engine_up=report.get("target_up") is True,
        speculation=model.get("speculation"),
        acceptance=model.get("acceptance_ratio"),
        mean_length=model.get("mean_acceptance_length"),
        draft_tokens=window.get("draft_tokens"),
        verdict=str(model.get("verdict") or "no-data"),
        speed=speed_from_report(model.get("measured_speedup")),
    )


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


NOT_YET_OFF = "not yet: needs windows with speculation off"
NOT_YET_MATCHED = "not yet: needs windows of both states at the same load"


def speed_words(speed: Speed | None, seen_off: bool) -> str:
    """The measured speedup in a line: '0.81x [0.62, 1.05] slower with speculation', or what it still needs
    (``seen_off``: the engine has run without speculation in this run, so only matched windows are missing)."""
    if speed is None:
        return NOT_YET_MATCHED if seen_off else NOT_YET_OFF
    finding = FINDING_WORDS.get(speed.finding, speed.finding)
    return f"{speed.speedup:.2f}x [{speed.low:.2f}, {speed.high:.2f}] {finding}"


def speed_cell(speed: Speed | None, seen_off: bool) -> str:
    """The same in a table cell, on a few short lines so the table fits 80 columns (the caption explains it)."""
    if speed is None:
        return "not yet: needs\nmatched windows" if seen_off else "not yet: needs\nspeculation off"
    return f"{speed.speedup:.2f}x {speed.finding}\n\\[{speed.low:.2f}, {speed.high:.2f}]"


def window_line(sample: Sample, sent: int, failed: int, seen_off: bool = False) -> str:
    """One line per window, printed as it closes: what a redirected `make demo > log` keeps of the live view."""
    traffic = f"{sent} requests, {failed} failed"
    if not sample.engine_up:
        return f"{clock(sample.at)}  {sample.phase:<6} vLLM is not answering (restarting)  · {traffic}"
    if sample.speculation != "on":
        what = "speculation off: no acceptance to measure"
    else:
        tokens = "—" if sample.draft_tokens is None else f"{sample.draft_tokens:,.0f}"
        what = (
            f"speculation on  acceptance {fmt(sample.acceptance)}  L {fmt(sample.mean_length, 2)}  "
            f"draft tokens {tokens}  verdict {sample.verdict}"
        )
    speed = f"measured speedup {speed_words(sample.speed, seen_off or sample.speculation == 'off')}"
    return f"{clock(sample.at)}  {sample.phase:<6} {what}  · {speed}  · {traffic}"


def phase_rows(samples: Sequence[Sample], toggles: Sequence[Toggle]) -> list[PhaseRow]:
    """A row per phase, in the order the phases ran.

    A phase in which the sidecar turned speculation off shows the last window it saw before acting (the
    evidence it acted on), not the empty windows after the restart. Any other phase shows its last window with
    speculation on; a phase that ran entirely without speculation has none, and says so.
    """
    phases = list(dict.fromkeys(s.phase for s in samples))
    rows = []
    for phase in phases:
        mine = [s for s in samples if s.phase == phase]
        acted = [t for t in toggles if t.phase == phase and t.by == "sidecar"]
        states = [s.speculation for s in mine if s.speculation is not None]
        speculation = " → ".join(_runs(states)) if states else "engine down"
        if acted:
            first = acted[0]
            evidence = _last_measured([s for s in samples if s.at <= first.at])
            note = (
                f"the last window before the sidecar turned speculation {first.state} at {clock(first.at)} "
                f"({REASONS.get(first.reason, first.reason)})"
            )
        else:
            evidence = _last_measured(mine)
            note = "its last window with speculation on" if evidence else "speculation off: nothing to measure"
        rows.append(PhaseRow(phase, speculation, evidence, note, acted=bool(acted), speed=_speed_at_end(samples, mine)))
    return rows


def _speed_at_end(samples: Sequence[Sample], mine: Sequence[Sample]) -> str:
    """The measured speedup as the phase's last readable report gave it (it covers the whole run so far)."""
    last = next((s for s in reversed(mine) if s.engine_up), None)
    if last is None:
        return "—"
    return speed_cell(last.speed, _seen_off(samples, last.at))


def _seen_off(samples: Sequence[Sample], until: float) -> bool:
    return any(s.speculation == "off" for s in samples if s.at <= until)


def phase_at(samples: Sequence[Sample], at: float) -> str | None:
    """The phase whose traffic was running at ``at``: the demo notices a toggle up to a second late, maybe
    after the next phase began, but the sidecar acted on the traffic before."""
    return next((s.phase for s in reversed(samples) if s.at <= at), None)


def _runs(states: Sequence[str]) -> list[str]:
    """Consecutive repeats collapsed: on, on, off, off, on → on, off, on."""
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def _last_measured(samples: Sequence[Sample]) -> Sample | None:
    return next((s for s in reversed(samples) if s.measured), None)


def phase_table(rows: Sequence[PhaseRow], now: Sample | None = None) -> Table:
    """The phase table: during the run with a "now" row (the sidecar's current window), at the end without.
    Narrow enough for 80 columns: which window a row shows is said under the table, not in a column."""
    table = Table(
        title=f"Each phase's last {WINDOW_SECONDS} s window with speculation on, as the sidecar saw it",
        title_justify="left",
    )
    for column in ("phase", "speculation", "acceptance", "L", "draft tokens", "verdict"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    # Its cells are short lines (speed_cell): on 80 columns rich wraps them further, wider terminals keep them.
    table.add_column("measured speedup")
    notes = [
        "L: mean acceptance length, tokens per verification step.",
        "measured speedup: time per output token with speculation off / on, from the sidecar's windows at the "
        "same load over the run so far, as it stood at the end of the phase (above 1: faster with speculation), "
        "then the finding (slower or faster when the whole 95 % interval, under it, is on one side of 1; unclear "
        "when it holds 1). Not yet: the sidecar needs windows with speculation off, then at least two windows of "
        "each state at the same load (matched windows).",
    ]
    for row in rows:
        label = row.phase
        if row.acted:
            label += " *"
            notes.append(f"* {row.phase}: {row.note}.")
        table.add_row(label, row.speculation, *_numbers(row.evidence), row.speed)
    if any(row.evidence is None for row in rows):
        notes.append("—: speculation off for the whole phase, nothing to measure.")
    if now is not None:
        speed = speed_cell(now.speed, now.speculation == "off" or any("off" in r.speculation for r in rows))
        table.add_row(
            "now", now.speculation or "engine down", *_numbers(now if now.engine_up else None),
            speed if now.engine_up else "—",
        )  # fmt: skip
    table.caption, table.caption_justify = "\n".join(notes), "left"
    return table


def _numbers(sample: Sample | None) -> tuple[str, str, str, str]:
    if sample is None:
        return "—", "—", "—", f"[{VERDICT_STYLE['no-data']}]no-data[/]"
    tokens = "—" if sample.draft_tokens is None else f"{sample.draft_tokens:,.0f}"
    style = VERDICT_STYLE.get(sample.verdict, "")
    return fmt(sample.acceptance), fmt(sample.mean_length, 2), tokens, f"[{style}]{sample.verdict}[/]"


def restart_note(failed_before: int, failed_after: int, seconds: float) -> str:
    """What the user should know about the client during a restart of vLLM."""
    lost = failed_after - failed_before
    paused = (
        f"vLLM restarted in {seconds:.0f} s. The demo's client paused and let its requests in flight finish "
        "first (in Kubernetes, a rolling update drains the old pod the same way)"
    )
    if lost <= 0:
        return paused + "; no request failed."
    return (
        paused + f"; still, {lost} request{'s' if lost != 1 else ''} failed: sent as the old engine stopped, "
        "they found no server (a client should retry these; the sidecar's numbers do not count them)."
    )


def closing_verdict(
    samples: Sequence[Sample],
    toggles: Sequence[Toggle],
    recommendation: str | None,
    reasons: Sequence[str],
) -> list[str]:
    """The closing lines: what the sidecar did and on what evidence, what the report over the whole run
    recommends, and whether the two agree (said plainly either way)."""
    lines = []
    off = next((t for t in toggles if t.by == "sidecar" and t.state == "off"), None)
    if off is None:
        lines.append(
            f"The sidecar kept speculation on: its windows never stayed below {RULE.disable_below:g} long enough."
        )
    else:
        evidence = _last_measured([s for s in samples if s.at <= off.at])
        seen = (
            f"its last window read acceptance {fmt(evidence.acceptance)} (verdict {evidence.verdict})"
            if evidence
            else "no window with speculation on was seen"
        )
        lines.append(
            f"The sidecar turned speculation off at {clock(off.at)}, during {off.phase}: {seen}; "
            f"reason: {REASONS.get(off.reason, off.reason)}."
        )
    for t in toggles:
        if t.by != "sidecar":
            lines.append(f"{t.by.capitalize()} turned speculation {t.state} at {clock(t.at)} ({t.reason}).")
    if recommendation is None:
        lines.append("The report over the whole run could not be read, so there is nothing to compare with.")
        return lines
    lines.append(f'The report over the whole run recommends "{recommendation}".')
    lines.extend(f"  • {reason}" for reason in reasons)
    lines.append(_agreement(off is not None, recommendation))
    return lines


def speed_verdict(samples: Sequence[Sample], toggles: Sequence[Toggle], final: Speed | None = None) -> list[str]:
    """The closing lines on the measured speedup: what the engine's own latency said, in plain words, and
    whether it backs what the sidecar did. ``final``: the sidecar's figure read after the traffic (the one the
    report above shows: it may hold a window more than the last look); else the last one seen during the run."""
    turned_off = any(t.by == "sidecar" and t.state == "off" for t in toggles)
    speed = final or next((s.speed for s in reversed(samples) if s.speed is not None), None)
    on = [s.acceptance for s in samples if s.measured and s.acceptance is not None]
    while_on = f"{min(on):.2f} to {max(on):.2f}" if on else "—"
    if speed is None:
        why = (
            "the engine never ran without speculation while traffic flowed"
            if not any(s.speculation == "off" for s in samples)
            else "there were too few full windows of one state, or they were at another load"
        )
        return [
            "The sidecar did not measure the speedup: it needs at least two full windows with speculation on and "
            f"two with it off at the same load (running requests), and {why}. So nothing here says whether "
            "speculation made this engine faster or slower; the decision rests on the acceptance threshold alone."
        ]
    change = 1.0 / speed.speedup - 1.0
    percent = round(abs(change) * 100)
    took = "about as long" if percent == 0 else f"{percent} % {'more' if change > 0 else 'less'} time"
    bands = ", ".join(speed.load_bands) or "?"
    lines = [
        f"The sidecar also timed the engine itself: at the same load ({bands} requests running), a token took {took} "
        f"with speculation on than with it off (measured speedup {speed.speedup:.2f}x, 95 % interval "
        f"{speed.low:.2f} to {speed.high:.2f}, from {speed.on_windows} windows with speculation on and "
        f"{speed.off_windows} with it off; while on, the windows read acceptance {while_on})."
    ]
    if speed.finding == "slower":
        lines.append("The whole interval is below 1: speculation made this engine slower at the acceptance it had.")
    elif speed.finding == "faster":
        lines.append("The whole interval is above 1: speculation made this engine faster at the acceptance it had.")
    else:
        lines.append("The interval holds 1: from these windows the engine was neither clearly faster nor slower.")
    if speed.breakeven is not None and speed.breakeven_low is not None and speed.breakeven_high is not None:
        force = (
            f"in force: the policy now judges acceptance against it instead of {RULE.disable_below:g}"
            if speed.in_force
            else f"not yet in force, the policy still uses {RULE.disable_below:g}"
            + (f" (it needs {speed.evidence_needed})" if speed.evidence_needed else "")
        )
        lines.append(
            f"By its own latency this engine breaks even at acceptance {speed.breakeven:.2f} "
            f"[{speed.breakeven_low:.2f}, {speed.breakeven_high:.2f}]; {force}."
        )
    lines.append(_speed_agreement(turned_off, speed.finding))
    return lines


def _speed_agreement(turned_off: bool, finding: str) -> str:
    if turned_off and finding == "slower":
        return "The measurement agrees with the decision: turning speculation off made tokens come faster here."
    if not turned_off and finding == "faster":
        return "The measurement agrees with the decision: keeping speculation on made tokens come faster here."
    if turned_off and finding == "faster":
        return (
            "The measurement does not back the decision: speculation still paid here at that acceptance. The "
            f"sidecar acted on the fixed threshold ({RULE.disable_below:g}), which the measured break-even "
            "replaces only once it is established (docs/policy.md)."
        )
    if not turned_off and finding == "slower":
        return (
            "The measurement differs from the decision: speculation cost time here, but the acceptance never "
            "stayed below the threshold long enough for the sidecar to act."
        )
    return (
        "So the measurement neither backs nor contradicts the decision yet: the sidecar "
        f"{'turned speculation off' if turned_off else 'kept speculation on'} on the acceptance threshold alone."
    )


def _agreement(turned_off: bool, recommendation: str) -> str:
    if turned_off and recommendation == "disable":
        return "They agree: speculation costs more than it gains on this traffic."
    if turned_off and recommendation == "disable for some traffic":
        return (
            "They agree: some of this traffic loses with speculation. The sidecar switches speculation for the "
            "whole engine, so it turned it off once the traffic it saw was the kind that loses; the report, over "
            "the whole run, tells which temperatures gain and which lose (the buckets above), so the traffic can "
            "be split between engines with and without speculation."
        )
    if not turned_off and recommendation in KEEP_ON:
        return "They agree: speculation pays on this traffic."
    if not turned_off and recommendation in TURN_OFF:
        return (
            "They differ: over the whole run speculation does not pay, but no run of the sidecar's 15 s windows "
            "stayed low long enough for it to act."
        )
    if turned_off and recommendation in KEEP_ON:
        return (
            "They differ: the sidecar acts on its last windows, the report weighs the whole run, where the "
            "traffic that gains outweighs the windows that made the sidecar act."
        )
    return "The report needs more data before it can agree or disagree with the sidecar."
