"""docs/configuration.md and the chart's sidecar.config schema are generated from Settings and must be current."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scripts import gen_config_docs
from sidecar.settings import Settings
from tests.deploy.tooling import CHART, ROOT, container, documents, one, render


def test_configuration_doc_and_chart_schema_are_current() -> None:
    assert gen_config_docs.main(["--check"]) == 0, "run python scripts/gen_config_docs.py"


def test_configuration_doc_lists_every_setting_with_its_flag_and_environment_variable() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| `(--[a-z0-9-]+)` \| `(SPEC_SIDECAR_[A-Z0-9_]+)` \|", doc, re.MULTILINE)
    assert [r[0] for r in rows] == list(Settings.model_fields)
    for name, flag, env in rows:
        assert flag == "--" + name.replace("_", "-")
        assert env == "SPEC_SIDECAR_" + name.upper()


def test_every_setting_the_chart_does_not_set_itself_is_a_chart_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = set(schema["properties"]["sidecar"]["properties"]["config"]["properties"])
    assert config == set(Settings.model_fields) - gen_config_docs.CHART_SETS


def test_a_chart_config_value_reaches_the_sidecar_and_is_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("--set", "sidecar.config.bucket_window=120", "--set", "sidecar.config.baseline_p99_p50=ttft=2.5")
    sidecar = container(one(documents(render(*args)), "Deployment"), "spec-sidecar")
    env = {e["name"]: e["value"] for e in sidecar["env"] if e["name"].startswith("SPEC_SIDECAR_")}
    assert env["SPEC_SIDECAR_BUCKET_WINDOW"] == "120"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_environment_only: dict[str, Any] = {}
    settings = Settings(**from_environment_only)
    assert settings.bucket_window == 120.0
    assert settings.baseline_p99_p50 == {"ttft": 2.5}
