"""The pager rules, checked by the real promtool: syntax, unit tests, and that the unit tests can fail.

The unit tests live in tests/deploy/alerts/spec-sidecar-rules.test.yaml. To show each alert is covered both
firing and not firing, every alert is replaced in turn by one that always fires and one that never fires: the
unit tests must then fail, or they did not really cover it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.tap.recorder import ERROR_REASONS
from tests.deploy.tooling import ROOT, RULES, run, tools

UNIT_TESTS = Path(__file__).parent / "alerts" / "spec-sidecar-rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
REQUIRED_ALERTS = {
    "SpecDecodeAcceptanceLow",
    "SpecDecodeAutoDisabled",
    "SpecDecodeFlapLatched",
    "SpecDecodeRolloutReverted",
    "SpecDecodeLatencyDivergence",
    "SpecSidecarActuatorFailing",
    "SpecSidecarTapUpstreamFailing",
    "SpecSidecarTapRefusing",
    "SpecSidecarDown",
    "SpecSidecarAbsent",
    "SpecDecodeTargetDown",
    "SpecDecodeNumbersInvalid",
}


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _promtool(*args: str | Path) -> tuple[int, str]:
    result = run([tools()["promtool"], *args], check=False)
    return result.returncode, result.stdout + result.stderr


def test_promtool_accepts_the_rule_file() -> None:
    code, out = _promtool("check", "rules", RULES)
    assert code == 0, out
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_every_promised_alert_exists_with_severity_summary_description_and_runbook() -> None:
    rules = {r["alert"]: r for r in _rules()}
    assert set(rules) == REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name


def test_every_tap_error_reason_is_watched_by_exactly_one_alert() -> None:
    # The tap alerts list their reasons by name: a reason added to the sidecar must be given to one of them.
    watched: list[str] = []
    for rule in _rules():
        if "specdecode_tap_errors_total" in rule["expr"]:
            match = re.search(r'reason=~"([^"]+)"', rule["expr"])
            assert match, f"{rule['alert']} selects tap errors without naming its reasons"
            watched += match.group(1).split("|")
    assert sorted(watched) == sorted(ERROR_REASONS)


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_runbook_url_points_at_a_section_of_docs_runbook() -> None:
    anchors = {_github_anchor(m) for m in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    for rule in _rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_promtool_unit_tests_pass() -> None:
    code, out = _promtool("test", "rules", UNIT_TESTS)
    assert code == 0, out
    assert "SUCCESS" in out


def test_unit_tests_cover_every_alert_both_firing_and_silent() -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {name: sorted(kinds) for name, kinds in cases.items()} == {name: [False, True] for name in REQUIRED_ALERTS}


def _mutated_run(tmp_path: Path, alert: str, expr: str) -> tuple[int, str]:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(rules_path)]
    tests_path = tmp_path / "tests.yaml"
    tests_path.write_text(yaml.safe_dump(tests))
    return _promtool("test", "rules", tests_path)


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_the_unit_tests_fail_when_an_alert_always_fires(alert: str, tmp_path: Path) -> None:
    code, out = _mutated_run(tmp_path, alert, "vector(1)")
    assert code != 0, f"{alert} replaced by an always-firing rule still passed:\n{out}"
    assert alert in out


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_the_unit_tests_fail_when_an_alert_never_fires(alert: str, tmp_path: Path) -> None:
    code, out = _mutated_run(tmp_path, alert, "vector(1) == 2")
    assert code != 0, f"{alert} replaced by a never-firing rule still passed:\n{out}"
    assert alert in out
