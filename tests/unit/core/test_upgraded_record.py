"""A removal record that holds credentials (version 1, from an older sidecar) is rewritten as the version 2 record
today's sidecar writes, and restore gives back the same args from it, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.core import specargs

SPEC = '{"method": "ngram", "num_speculative_tokens": 3}'
KEY, KEY2, HF = "sk-live-0123456789abcdef", "sk-second-key", "hf_topsecretToken"
SCRIPT = (
    f"exec vllm serve /m --api-key '{KEY}' \\\n  --speculative-config '{SPEC}' \\\n"
    f"  '--hf-token={HF}' --port 8000 && echo done"
)

CASES: list[tuple[list[str] | None, list[str]]] = [
    (None, ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC, "--port", "8000"]),
    (None, ["--model", "/m", f"--api-key={KEY}", "--speculative-config", SPEC]),
    (None, ["--model", "/m", "--api_key", KEY, "--spec-tokens", "3"]),
    (None, ["--api-key", KEY, KEY2, "--speculative-config", SPEC, "--hf-token", HF]),
    (None, ["--speculative-config", SPEC, "--api-k", KEY, f"--hf-token={HF}"]),
    (["/bin/sh", "-c"], [SCRIPT]),
    (["vllm", "serve", "--api-key", KEY], ["/m", "--speculative-config", SPEC]),
]


def version_1(command: list[str] | None, args: list[str]) -> tuple[specargs.Removal, dict[str, Any]]:
    """The removal as an older sidecar recorded it: the args left after it, as they were (no redaction)."""
    removal = specargs.remove(command, args, secret_flags=())
    return removal, {**removal.record, "version": 1}


@pytest.mark.parametrize(("command", "args"), CASES)
def test_a_version_1_record_with_credentials_becomes_the_record_written_today(
    command: list[str] | None, args: list[str]
) -> None:
    _, old = version_1(command, args)
    assert KEY in json.dumps(old)
    new = specargs.upgraded_record(old)
    assert new is not None
    text = json.dumps(new)
    assert KEY not in text and KEY2 not in text and HF not in text
    assert new == specargs.remove(command, args).record  # exactly what a sidecar of today would have written
    assert new["edits"] == old["edits"]


@pytest.mark.parametrize(("command", "args"), CASES)
def test_restore_from_the_upgraded_record_rebuilds_the_original_byte_for_byte(
    command: list[str] | None, args: list[str]
) -> None:
    removal, old = version_1(command, args)
    new = specargs.upgraded_record(old)
    assert new is not None
    expected = (command, args)
    assert specargs.restore(removal.command, removal.args, old) == expected
    assert specargs.restore(removal.command, removal.args, new) == expected
    # Through JSON, as it lives in the annotation.
    assert specargs.restore(removal.command, removal.args, json.loads(json.dumps(new))) == expected


@pytest.mark.parametrize(("command", "args"), CASES)
def test_an_upgraded_record_is_not_upgraded_again(command: list[str] | None, args: list[str]) -> None:
    _, old = version_1(command, args)
    new = specargs.upgraded_record(old)
    assert new is not None
    assert specargs.upgraded_record(new) is None
    assert specargs.upgraded_record(specargs.remove(command, args).record) is None


def test_a_version_1_record_without_credentials_is_left_as_it_is_and_still_restores() -> None:
    args = ["--model", "/m", "--speculative-config", SPEC, "--port", "8000"]
    removal, old = version_1(None, args)
    assert specargs.upgraded_record(old) is None  # nothing to take off the Deployment: no write, no Event
    assert specargs.restore(None, removal.args, old) == (None, args)


def test_after_the_upgrade_a_rotated_key_restores_with_the_live_key_and_other_edits_still_conflict() -> None:
    args = ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC, "--port", "8000"]
    removal, old = version_1(None, args)
    new = specargs.upgraded_record(old)
    assert new is not None and removal.args is not None
    rotated = [KEY2 if a == KEY else a for a in removal.args]
    with pytest.raises(specargs.RestoreConflictError):  # version 1 compared the key too
        specargs.restore(None, rotated, old)
    assert specargs.restore(None, rotated, new) == (None, [KEY2 if a == KEY else a for a in args])
    with pytest.raises(specargs.RestoreConflictError):
        specargs.restore(None, [a if a != "8000" else "9000" for a in removal.args], new)


def test_a_version_1_record_is_redacted_under_the_secret_flags_setting() -> None:
    args = ["--model", "/m", "--my-token", "tok-123", "--api-key", KEY, "--speculative-config", SPEC]
    removal, old = version_1(None, args)
    new = specargs.upgraded_record(old, ("--my-token",))
    assert new is not None and "tok-123" not in json.dumps(new) and KEY in json.dumps(new)  # only what it lists
    assert specargs.restore(None, removal.args, new) == (None, args)


def test_a_version_2_record_is_never_rewritten_even_under_a_longer_secret_flags_list() -> None:
    args = ["--model", "/m", "--my-token", "tok-123", "--speculative-config", SPEC]
    written = specargs.remove(None, args).record  # --my-token was not a secret flag when it was written
    assert specargs.upgraded_record(written, ("--api-key", "--my-token")) is None


@pytest.mark.parametrize(
    "record",
    [
        {"version": 3, "edits": [], "after": {"command": None, "args": ["--api-key", KEY]}},
        {"version": "1", "edits": [], "after": {"command": None, "args": ["--api-key", KEY]}},
        {"version": 1, "edits": [], "after": {"command": None, "args": ["--api-key", 7]}},
        {"version": 1, "edits": [], "after": "--api-key " + KEY},
        {"version": 1, "after": {"command": None, "args": ["--api-key", KEY]}},
        {},
    ],
    ids=["unknown-version", "version-as-text", "not-strings", "after-not-an-object", "no-edits", "empty"],
)
def test_a_record_that_cannot_be_read_is_not_rewritten(record: dict[str, Any]) -> None:
    assert specargs.upgraded_record(record) is None  # restore refuses it (not_restorable); a rewrite cannot help
