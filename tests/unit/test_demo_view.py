"""The words `make demo` prints about its run, computed from what it saw (scripts/demo_view.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

from rich.console import Console

from scripts.demo_view import (
    Sample,
    Speed,
    Toggle,
    closing_verdict,
    phase_at,
    phase_rows,
    phase_table,
    restart_note,
    sample_from_report,
    speed_verdict,
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


def speed(value: float, low: float, high: float, finding: str, in_force: bool = False) -> Speed:
    needed = None if in_force else "3 more windows with it off at matched load"
    return Speed(value, low, high, finding, 5, 4, ("2-4",), 0.42, 0.31, 0.55, in_force, needed)


# The same run as the sidecar reported it: no speedup until windows with speculation off sat beside the on ones.
SLOWER = speed(0.81, 0.70, 0.93, "slower")
RUN_MEASURED = [*RUN[:6], replace(RUN[6], speed=SLOWER), replace(RUN[7], speed=SLOWER)]


def test_a_sample_reads_the_measured_speedup_of_the_sidecars_report() -> None:
    measured = {
        "speedup": 0.81, "low": 0.70, "high": 0.93, "finding": "slower", "on_windows": 5, "off_windows": 4,
        "load_bands": ["2-4"], "effective_draft_cost_ratio": 0.42, "breakeven_acceptance_ratio": 0.42,
        "breakeven_acceptance_interval": [0.31, 0.55], "e2e_p50_ratio": 0.9, "e2e_p99_ratio": 0.8,
        "in_force": False, "in_force_threshold": None,
        "evidence_needed": "3 more windows with it off at matched load",
    }  # fmt: skip
    report = {"target_up": True, "models": [{"speculation": "off", "measured_speedup": measured}]}

    assert sample_from_report(report, "T=0.6", T0).speed == SLOWER


def test_a_null_absent_or_unreadable_measured_speedup_is_no_speedup() -> None:
    for measured in (None, {}, {"speedup": "fast"}, "0.8"):
        report = {"target_up": True, "models": [{"speculation": "on", "measured_speedup": measured}]}
        assert sample_from_report(report, "T=0.0", T0).speed is None
    assert sample_from_report({"target_up": True, "models": [{}]}, "T=0.0", T0).speed is None


def test_a_window_line_says_what_the_measured_speedup_still_needs_until_it_has_a_figure() -> None:
    before_off = window_line(on(10, "T=0.0", 0.52, "borderline"), 50, 0, seen_off=False)
    after_off = window_line(off(140, "T=0.3"), 300, 0, seen_off=True)
    measured = window_line(RUN_MEASURED[6], 400, 0, seen_off=True)

    assert "acceptance 0.520" in before_off
    assert "measured speedup not yet: needs windows with speculation off" in before_off
    assert "measured speedup not yet: needs windows of both states at the same load" in after_off
    assert "measured speedup 0.81x [0.70, 0.93] slower with speculation" in measured
    restarting = window_line(down(70, "T=0.3"), 1, 0)
    assert "not answering" in restarting and "speedup" not in restarting


def test_the_phase_table_shows_the_measured_speedup_as_it_stood_at_the_end_of_each_phase() -> None:
    rows = {row.phase: row for row in phase_rows(RUN_MEASURED, [SIDECAR_OFF])}

    assert rows["T=0.0"].speed == "not yet: needs\nspeculation off"
    assert rows["T=0.3"].speed == "not yet: needs\nmatched windows"
    assert rows["T=0.6"].speed == "0.81x slower\n\\[0.70, 0.93]"
    printed = text(phase_table(list(rows.values()), now=replace(off(300, "T=1.0"), speed=SLOWER)), width=120)
    assert "measured speedup" in printed
    t06 = printed.splitlines().index(next(line for line in printed.splitlines() if "T=0.6" in line))
    assert "0.81x slower" in printed.splitlines()[t06]
    assert "[0.70, 0.93]" in printed.splitlines()[t06 + 1]
    now = next(line for line in printed.splitlines() if line.startswith("│ now"))
    assert "0.81x slower" in now


def test_the_closing_lines_tell_the_measured_speedup_in_words_and_that_it_backs_turning_speculation_off() -> None:
    lines = speed_verdict(RUN_MEASURED, [SIDECAR_OFF])

    assert "a token took 23 % more time with speculation on than with it off" in lines[0]
    assert "0.81x, 95 % interval 0.70 to 0.93" in lines[0] and "5 windows with speculation on and 4" in lines[0]
    assert "2-4 requests running" in lines[0]
    assert "acceptance 0.01 to 1.00" in lines[0]
    assert lines[1].startswith("The whole interval is below 1")
    assert "breaks even at acceptance 0.42 [0.31, 0.55]" in lines[2] and "not yet in force" in lines[2]
    assert lines[-1].startswith("The measurement agrees with the decision")


def test_the_closing_lines_say_plainly_when_the_measurement_does_not_back_the_decision() -> None:
    faster = [*RUN[:7], replace(RUN[7], speed=speed(1.4, 1.1, 1.8, "faster", in_force=True))]
    unclear = [*RUN[:7], replace(RUN[7], speed=speed(0.95, 0.8, 1.1, "unclear"))]

    against = speed_verdict(faster, [SIDECAR_OFF])
    assert "a token took 29 % less time" in against[0]
    assert "in force" in against[2] and "not yet" not in against[2]
    assert against[-1].startswith("The measurement does not back the decision")
    assert speed_verdict(unclear, [SIDECAR_OFF])[-1].startswith("So the measurement neither backs nor contradicts")
    assert speed_verdict(faster, [])[-1].startswith("The measurement agrees with the decision: keeping")


def test_the_closing_lines_without_a_measured_speedup_say_why_and_claim_nothing() -> None:
    never_off = speed_verdict(RUN[:2], [])
    too_few = speed_verdict(RUN, [SIDECAR_OFF])

    assert len(never_off) == 1 and "did not measure the speedup" in never_off[0]
    assert "never ran without speculation" in never_off[0]
    assert "too few full windows" in too_few[0]
    assert "faster" not in too_few[0].replace("faster or slower", "")


def test_the_closing_lines_tell_the_figure_read_after_the_traffic_when_there_is_one() -> None:
    final = speed(0.87, 0.59, 1.27, "unclear")

    assert "measured speedup 0.87x" in speed_verdict(RUN_MEASURED, [SIDECAR_OFF], final)[0]
    assert "measured speedup 0.81x" in speed_verdict(RUN_MEASURED, [SIDECAR_OFF], None)[0]


def test_a_speedup_of_one_reads_as_about_as_long_not_zero_percent_more() -> None:
    even = speed(0.999, 0.63, 1.58, "unclear")

    assert "a token took about as long with speculation on" in speed_verdict(RUN_MEASURED, [SIDECAR_OFF], even)[0]
