"""Every subcommand's --help, run as a user runs it: the installed `spec-sidecar` entry point, in a subprocess.

The subcommands are read from the CLI's own parser, so a new one is covered without touching this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli.main import build_parser

ENTRY_POINT = Path(sys.executable).with_name("spec-sidecar")
# Words that belong to the code, not to a user: design notes ("the seed"), module docstrings, registration, reST.
INTERNAL_WORDS = ("seed", "COMMANDS", "register(", "docstring", "``", ":func:", ":mod:", "subparsers", "TODO")


def subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def help_of(*command: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: argparse wraps to the terminal; a fixed width keeps the output the same everywhere.
    env = {"PATH": str(ENTRY_POINT.parent), "COLUMNS": "100", "HOME": "/nonexistent"}
    return subprocess.run(
        [str(ENTRY_POINT), *command, "--help"], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_the_cli_has_the_subcommands_the_readme_tours() -> None:
    assert {"run", "report", "probe", "status", "enable", "disable", "inject"} <= set(subcommands())


@pytest.mark.parametrize("command", [(), *((name,) for name in subcommands())], ids=lambda c: " ".join(c) or "top")
def test_every_help_exits_0_with_a_description_every_flag_and_the_exit_codes(command: tuple[str, ...]) -> None:
    done = help_of(*command)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith(f"usage: spec-sidecar {' '.join(command)}".rstrip())
    # A description of its own, not just the usage line and the flags.
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 8, description
    assert "exit codes:" in out and "  2    " in out
    if command:
        parser = build_parser()
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        flags = {f for action in sub.choices[command[0]]._actions for f in action.option_strings}
        assert all(flag in out for flag in flags), sorted(f for f in flags if f not in out)


@pytest.mark.parametrize("command", subcommands())
def test_no_help_text_speaks_in_internal_words(command: str) -> None:
    out = help_of(command).stdout
    assert out, "no help printed"
    assert [word for word in INTERNAL_WORDS if word in out] == []


def test_run_help_shows_the_percent_in_the_warmup_description_and_the_environment_variables() -> None:
    out = help_of("run").stdout
    assert "32 % of fresh starts" in " ".join(out.split())
    assert "SPEC_SIDECAR_SCRAPE_INTERVAL" in out
