"""The removal record holds no credential, and restore still rebuilds the original byte for byte."""

from __future__ import annotations

import json

import pytest

from sidecar.core import specargs
from sidecar.settings import Settings

SPEC = '{"method": "ngram", "num_speculative_tokens": 3}'
KEY, KEY2, HF = "sk-live-0123456789abcdef", "sk-second-key", "hf_topsecretToken"


def record_text(command: list[str] | None, args: list[str]) -> str:
    return json.dumps(specargs.remove(command, args).record)


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC, "--port", "8000"],
        ["--model", "/m", f"--api-key={KEY}", "--speculative-config", SPEC],
        ["--model", "/m", "--api_key", KEY, "--spec-tokens", "3"],  # vLLM reads '_' as '-'
        ["--api-key", KEY, KEY2, "--speculative-config", SPEC, "--hf-token", HF],  # several keys
        ["--speculative-config", SPEC, "--api-k", KEY, f"--hf-token={HF}"],  # an abbreviation argparse takes
    ],
)
def test_no_credential_reaches_the_record_and_restore_is_byte_for_byte(args: list[str]) -> None:
    removal = specargs.remove(None, args)
    text = json.dumps(removal.record)
    assert KEY not in text and KEY2 not in text and HF not in text
    assert specargs.REDACTED in text
    assert specargs.restore(None, removal.args, removal.record) == (None, args)


def test_a_credential_inside_a_shell_script_is_redacted_and_the_script_restored_exactly() -> None:
    script = (
        f"exec vllm serve /m --api-key '{KEY}' \\\n  --speculative-config '{SPEC}' \\\n"
        f"  '--hf-token={HF}' --port 8000 && echo done"
    )
    command = ["/bin/sh", "-c"]
    removal = specargs.remove(command, [script])
    text = json.dumps(removal.record)
    assert KEY not in text and HF not in text
    assert specargs.restore(command, removal.args, removal.record) == (command, [script])


def test_a_rotated_key_does_not_block_the_restore_and_the_live_key_is_kept() -> None:
    args = ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC]
    removal = specargs.remove(None, args)
    assert removal.args is not None
    rotated = [KEY2 if a == KEY else a for a in removal.args]
    assert specargs.restore(None, rotated, removal.record) == (None, [KEY2 if a == KEY else a for a in args])


def test_any_other_edit_since_the_removal_is_still_a_conflict() -> None:
    args = ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC, "--port", "8000"]
    removal = specargs.remove(None, args)
    assert removal.args is not None
    for edited in (
        [a if a != "8000" else "9000" for a in removal.args],
        [*removal.args, "--extra"],
        [a for a in removal.args if a != KEY],  # the key's value itself gone: the list no longer lines up
    ):
        with pytest.raises(specargs.RestoreConflictError):
            specargs.restore(None, edited, removal.record)


def test_a_record_of_the_previous_version_with_the_key_in_it_is_still_restored() -> None:
    args = ["--model", "/m", "--api-key", KEY, "--speculative-config", SPEC, "--port", "8000"]
    after = ["--model", "/m", "--api-key", KEY, "--port", "8000"]
    old = {
        "version": 1,
        "edits": [{"field": "args", "index": 4, "items": ["--speculative-config", SPEC]}],
        "after": {"command": None, "args": after},
    }
    assert specargs.restore(None, after, old) == (None, args)
    with pytest.raises(specargs.RestoreConflictError):  # version 1 compares exactly, as it always did
        specargs.restore(None, [KEY2 if a == KEY else a for a in after], old)


def test_the_secret_flags_are_a_setting_that_replaces_the_default_list() -> None:
    settings = Settings(secret_flags="--api-key, --my-token")
    flags = settings.secret_flag_list()
    assert flags == ("--api-key", "--my-token")
    args = ["--model", "/m", "--my-token", "tok-123", "--hf-token", HF, "--speculative-config", SPEC]
    removal = specargs.remove(None, args, secret_flags=flags)
    text = json.dumps(removal.record)
    assert "tok-123" not in text and HF in text  # only what the setting lists
    assert specargs.restore(None, removal.args, removal.record) == (None, args)
    assert Settings().secret_flag_list() == specargs.DEFAULT_SECRET_FLAGS
    with pytest.raises(ValueError, match="flag names"):
        Settings(secret_flags="api-key")


def test_non_secret_flags_that_look_alike_are_kept_as_written() -> None:
    args = [
        "--max-num-batched-tokens",
        "8192",
        "--tokenizer",
        "/t",
        "--speculative-config",
        SPEC,
        "--api-server-count",
        "2",
    ]
    after = specargs.remove(None, args).record["after"]["args"]
    assert after == ["--max-num-batched-tokens", "8192", "--tokenizer", "/t", "--api-server-count", "2"]
