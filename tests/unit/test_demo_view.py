"""The words `make demo` prints about its run, computed from what it saw (scripts/demo_view.py)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from scripts.demo_view import (
    Sample,
    Toggle,
    closing_verdict,
    phase_at,
    phase_rows,
    phase_table,
    restart_note,
    sample_from_report,
    window_line,
)

T0 = 1_800_000_000.0


def on(at: float, phase: str, acceptance: float, verdict: str) -> Sample:
    return Sample(T0 + at, phase, True, "on", acceptance, 1 + 4 * acceptance, 2000.0, verdict)


def off(at: float, phase: str) -> Sample:
    return Sample(T0 + at, phase, True, "off", None, None, None, "no-data")


def down(at: float, phase: str) -> Sample:
    return Sample(T0 + at, phase, False, None, None, None, None, "no-data")


# The demo as it ran on a 2-core machine: the sidecar turned speculation off during T=0.3.
RUN = [
    on(10, "T=0.0", 1.0, "keep"),
    on(40, "T=0.0", 0.999, "keep"),
    on(50, "T=0.3", 0.46, "disable"),
    on(60, "T=0.3", 0.009, "disable"),
    down(70, "T=0.3"),
    off(140, "T=0.3"),
    off(160, "T=0.6"),
    off(200, "T=1.0"),
]
SIDECAR_OFF = Toggle(T0 + 65, "T=0.3", "off", "low_acceptance", "sidecar")
PERSON_ON = Toggle(T0 + 250, "after the traffic", "on", "spec-sidecar enable", "a person")


def text(table: Any, width: int = 200) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(table)
    return buffer.getvalue()


def test_the_phase_where_the_sidecar_acted_shows_the_window_it_acted_on_not_the_empty_ones_after() -> None:
    rows = {row.phase: row for row in phase_rows(RUN, [SIDECAR_OFF, PERSON_ON])}

    acted = rows["T=0.3"]
    assert acted.evidence is not None
    assert acted.evidence.acceptance == 0.009
    assert acted.evidence.verdict == "disable"
    assert acted.speculation == "on → off"
    assert "before the sidecar turned speculation off" in acted.note
    assert "acceptance below 0.5" in acted.note


def test_a_phase_without_speculation_says_there_was_nothing_to_measure() -> None:
    rows = {row.phase: row for row in phase_rows(RUN, [SIDECAR_OFF])}

    assert rows["T=1.0"].evidence is None
    assert rows["T=1.0"].speculation == "off"
    assert rows["T=1.0"].note == "speculation off: nothing to measure"
    assert rows["T=0.0"].evidence is not None and rows["T=0.0"].evidence.acceptance == 0.999


def test_a_toggle_noticed_after_the_next_phase_began_belongs_to_the_phase_the_sidecar_acted_in() -> None:
    samples = [on(10, "T=0.3", 0.02, "disable"), on(11, "T=0.6", 0.02, "disable")]

    assert phase_at(samples, T0 + 10.5) == "T=0.3"
    assert phase_at(samples, T0 + 11) == "T=0.6"
    assert phase_at(samples, T0 + 5) is None


def test_a_phase_with_speculation_turned_off_and_on_again_shows_both_changes() -> None:
    samples = [on(1, "T=0.3", 0.9, "keep"), off(2, "T=0.3"), off(3, "T=0.3"), on(4, "T=0.3", 0.9, "keep")]

    assert phase_rows(samples, [])[0].speculation == "on → off → on"


def test_phase_rows_keep_the_order_the_phases_ran_in() -> None:
    assert [row.phase for row in phase_rows(RUN, [])] == ["T=0.0", "T=0.3", "T=0.6", "T=1.0"]


def test_the_phase_table_prints_the_acting_window_and_a_now_row_within_80_columns() -> None:
    printed = text(phase_table(phase_rows(RUN, [SIDECAR_OFF]), now=off(300, "T=1.0")), width=80)
    lines = printed.splitlines()

    t03 = next(line for line in lines if "T=0.3" in line)
    assert "T=0.3 *" in t03 and "0.009" in t03 and "disable" in t03
    now = next(line for line in lines if line.startswith("│ now"))
    assert "off" in now and "no-data" in now
    assert any(line.startswith("* T=0.3: the last window before the sidecar") for line in lines)
    assert any(line.startswith("—: speculation off for the whole phase") for line in lines)
    assert max(len(line) for line in lines) <= 80


def test_a_window_line_carries_the_acceptance_and_verdict_of_a_speculating_engine() -> None:
    line = window_line(on(60, "T=0.3", 0.123, "disable"), sent=350, failed=0)

    assert "T=0.3" in line
    assert "acceptance 0.123" in line
    assert "verdict disable" in line
    assert "draft tokens 2,000" in line
    assert "350 requests, 0 failed" in line


def test_a_window_line_says_when_there_is_nothing_to_measure_or_no_engine() -> None:
    assert "speculation off: no acceptance to measure" in window_line(off(1, "T=1.0"), 1, 0)
    assert "not answering" in window_line(down(1, "T=0.3"), 1, 0)


def test_a_sample_reads_the_first_model_of_the_sidecars_report() -> None:
    report = {
        "target_up": True,
        "models": [
            {
                "speculation": "on",
                "acceptance_ratio": 0.42,
                "mean_acceptance_length": 2.5,
                "window": {"draft_tokens": 1200.0},
                "verdict": "disable",
            }
        ],
    }

    sample = sample_from_report(report, "T=0.6", T0)

    assert sample == Sample(T0, "T=0.6", True, "on", 0.42, 2.5, 1200.0, "disable")
    assert sample.measured


def test_an_unreadable_report_is_an_engine_that_is_down() -> None:
    sample = sample_from_report({}, "T=0.3", T0)

    assert not sample.engine_up
    assert sample.verdict == "no-data"
    assert not sample.measured


def test_the_verdict_names_the_evidence_the_sidecar_acted_on_and_agrees_with_disable_for_some() -> None:
    lines = closing_verdict(
        RUN, [SIDECAR_OFF, PERSON_ON], "disable for some traffic", ["Temperature [0.3,0.6) is below 0.5."]
    )

    assert "turned speculation off" in lines[0] and "during T=0.3" in lines[0]
    assert "acceptance 0.009" in lines[0] and "acceptance below 0.5" in lines[0]
    assert lines[1].startswith("A person turned speculation on")
    assert lines[2] == 'The report over the whole run recommends "disable for some traffic".'
    assert lines[3] == "  • Temperature [0.3,0.6) is below 0.5."
    assert lines[4].startswith("They agree")


def test_the_verdict_says_plainly_when_the_report_and_the_sidecar_differ() -> None:
    turned_off = closing_verdict(RUN, [SIDECAR_OFF], "keep but watch", [])
    kept_on = closing_verdict(RUN[:2], [], "disable", [])

    assert turned_off[-1].startswith("They differ")
    assert kept_on[0].startswith("The sidecar kept speculation on")
    assert kept_on[-1].startswith("They differ")


def test_the_verdict_agrees_when_both_keep_speculation() -> None:
    assert closing_verdict(RUN[:2], [], "keep", [])[-1].startswith("They agree")


def test_the_verdict_without_a_report_does_not_pretend_to_compare() -> None:
    lines = closing_verdict(RUN, [SIDECAR_OFF], None, [])

    assert "could not be read" in lines[-1]
    assert not any(line.startswith("They") for line in lines)


def test_a_restart_that_broke_no_request_says_so_and_one_that_did_explains_why() -> None:
    clean = restart_note(failed_before=0, failed_after=0, seconds=71.4)
    broken = restart_note(failed_before=1, failed_after=3, seconds=71.4)

    assert "71 s" in clean and "no request failed" in clean
    assert "2 requests failed" in broken and "retry" in broken
