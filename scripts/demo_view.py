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
    )


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def window_line(sample: Sample, sent: int, failed: int) -> str:
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
    return f"{clock(sample.at)}  {sample.phase:<6} {what}  · {traffic}"


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
        rows.append(PhaseRow(phase, speculation, evidence, note, acted=bool(acted)))
    return rows


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
    notes = ["L: mean acceptance length, tokens per verification step."]
    for row in rows:
        label = row.phase
        if row.acted:
            label += " *"
            notes.append(f"* {row.phase}: {row.note}.")
        table.add_row(label, row.speculation, *_numbers(row.evidence))
    if any(row.evidence is None for row in rows):
        notes.append("—: speculation off for the whole phase, nothing to measure.")
    if now is not None:
        table.add_row("now", now.speculation or "engine down", *_numbers(now if now.engine_up else None))
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
