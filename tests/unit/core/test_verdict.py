"""The operating rule: >= 0.65 keep, >= 0.5 borderline, below disable; no-data without evidence."""

from __future__ import annotations

import pytest

from sidecar.core.verdict import Thresholds, Verdict, verdict

RULE = Thresholds(disable_below=0.5, keep_from=0.65, min_draft_tokens=200)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (0.9, Verdict.KEEP),
        (0.65, Verdict.KEEP),
        (0.6499, Verdict.BORDERLINE),
        (0.5, Verdict.BORDERLINE),
        (0.4999, Verdict.DISABLE),
        (0.0, Verdict.DISABLE),
    ],
)
def test_acceptance_ratio_maps_to_the_operating_rules_verdict(ratio: float, expected: Verdict) -> None:
    assert verdict(ratio, 1000, True, RULE) is expected


def test_fewer_draft_tokens_than_the_minimum_is_no_data() -> None:
    assert verdict(0.9, 199, True, RULE) is Verdict.NO_DATA
    assert verdict(0.1, 199, True, RULE) is Verdict.NO_DATA
    assert verdict(0.1, 200, True, RULE) is Verdict.DISABLE


def test_speculation_off_is_no_data_whatever_the_numbers() -> None:
    assert verdict(0.9, 10_000, False, RULE) is Verdict.NO_DATA


def test_unknown_ratio_or_evidence_is_no_data() -> None:
    assert verdict(None, 10_000, True, RULE) is Verdict.NO_DATA
    assert verdict(0.9, None, True, RULE) is Verdict.NO_DATA


def test_verdict_values_are_the_strings_of_the_report_contract() -> None:
    assert [v.value for v in Verdict] == ["keep", "borderline", "disable", "no-data", "invalid"]
