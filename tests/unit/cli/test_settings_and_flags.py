"""Every setting is a flag and an environment variable; flags beat the environment, which beats defaults."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sidecar.cli.flags import section_title, settings_from_args
from sidecar.cli.main import build_parser, main
from sidecar.settings import SECTIONS, Settings, TargetSettings, host_port
from tests.support.manifest_files import LIST_MANIFEST


def test_every_setting_is_a_flag_of_run() -> None:
    parser = build_parser()
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    run: argparse.ArgumentParser = sub.choices["run"]
    flags = {opt for action in run._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags


def test_a_flag_beats_the_environment_which_beats_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEC_SIDECAR_SCRAPE_INTERVAL", "7")
    monkeypatch.setenv("SPEC_SIDECAR_WINDOW", "120")
    args = build_parser().parse_args(["run", "--scrape-interval", "2"])
    settings = settings_from_args(args, Settings)
    assert settings.scrape_interval == 2.0
    assert settings.window == 120.0
    assert settings.threshold == Settings.model_fields["threshold"].default


def test_dry_run_is_a_boolean_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args(build_parser().parse_args(["run", "--dry-run"]), Settings).dry_run is True
    monkeypatch.setenv("SPEC_SIDECAR_DRY_RUN", "true")
    assert settings_from_args(build_parser().parse_args(["run"]), Settings).dry_run is True
    assert settings_from_args(build_parser().parse_args(["run", "--no-dry-run"]), Settings).dry_run is False


def test_the_baseline_is_written_as_metric_equals_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEC_SIDECAR_BASELINE_P99_P50", "ttft=2.5, tpot=1.4")
    assert Settings().baseline_p99_p50 == {"ttft": 2.5, "tpot": 1.4}
    with pytest.raises(ValueError, match="metric=ratio"):
        # Raw input, as from the environment: Settings' typed __init__ takes the parsed dict.
        Settings.model_validate({"baseline_p99_p50": "latency=3"})


def test_a_bad_value_is_one_clear_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--threshold", "1.5", "nonexistent.txt"]) == 2
    err = capsys.readouterr().err
    assert "--threshold" in err
    assert "less than or equal to 1" in err


def test_listen_takes_host_and_port_including_ipv6() -> None:
    assert host_port("0.0.0.0:8081") == ("0.0.0.0", 8081)
    assert host_port("[::1]:9000") == ("::1", 9000)
    for bad in ("8081", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            host_port(bad)


def test_an_engine_or_prometheus_url_without_scheme_is_refused() -> None:
    for field in ("vllm_url", "prometheus_url"):
        with pytest.raises(ValueError, match=r"http://127\.0\.0\.1:8000 \(with http:// or https://\)"):
            Settings.model_validate({field: "127.0.0.1:8000", "deployment": "vllm"})
    assert Settings(vllm_url="https://engine.ml.svc:8000").vllm_url == "https://engine.ml.svc:8000"
    assert Settings(prometheus_url="").prometheus_url == ""  # blank: no fleet mode
    with pytest.raises(ValueError, match="with http:// or https://"):
        Settings(vllm_url="")


def test_the_disable_threshold_may_not_be_above_the_keep_threshold() -> None:
    with pytest.raises(ValueError, match=r"--threshold \(0\.7\) is above --keep-threshold \(0\.6\)"):
        Settings(threshold=0.7, keep_threshold=0.6)
    assert Settings(threshold=0.6, keep_threshold=0.6).threshold == 0.6  # no borderline band is allowed


def test_a_bad_value_from_the_environment_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEC_SIDECAR_SCRAPE_TIMEOUT", "soon")
    assert main(["report", "nonexistent.txt"]) == 2
    err = capsys.readouterr().err
    assert "environment variable SPEC_SIDECAR_SCRAPE_TIMEOUT=soon" in err
    assert "--scrape-timeout" not in err


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


def test_every_setting_belongs_to_exactly_one_section_in_the_order_of_the_flags() -> None:
    names = [name for section in SECTIONS for name in section.model_fields]
    assert names == list(Settings.model_fields)


def test_run_help_groups_the_flags_by_section() -> None:
    titles = [group.title for group in _subcommand("run")._action_groups]
    assert [section_title(section) for section in SECTIONS] == [
        t for t in titles if t not in ("options", "positional arguments")
    ]
    assert "The target the sidecar (and status, enable, disable) acts on" in titles


@pytest.mark.parametrize("command", ["status", "enable", "disable"])
def test_the_target_commands_take_the_target_section_and_nothing_else_of_the_settings(command: str) -> None:
    flags = {opt for action in _subcommand(command)._actions for opt in action.option_strings}
    target = {"--" + name.replace("_", "-") for name in TargetSettings.model_fields}
    others = {"--" + name.replace("_", "-") for name in Settings.model_fields} - target
    assert target <= flags
    assert not flags & others
    assert {"--kubeconfig", "--kube-host"} <= flags


def test_status_reads_its_target_from_the_environment_like_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(LIST_MANIFEST)
    monkeypatch.setenv("SPEC_SIDECAR_DEPLOYMENT_FILE", str(manifest))
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"].startswith(f"file:{manifest}")


def test_a_bad_target_variable_is_named_by_its_variable_for_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEC_SIDECAR_SECRET_FLAGS", "api-key")
    assert main(["status", "--deployment-file", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spec-sidecar status: environment variable SPEC_SIDECAR_SECRET_FLAGS=api-key")
