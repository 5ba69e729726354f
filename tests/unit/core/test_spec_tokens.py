"""Rewriting num_speculative_tokens in every spelling, and restoring the original byte for byte."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import spec_tokens, specargs
from sidecar.core.specargs import RestoreConflictError

Fields = tuple[list[str] | None, list[str] | None]

SPELLINGS: dict[str, Fields] = {
    "JSON value": (None, ["--model", "m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 5}']),
    "=JSON": (None, ["--model", "m", '--speculative-config={"method":"ngram","num_speculative_tokens":5}']),
    "-sc with a dashed key": (None, ["--model", "m", "-sc", '{"num-speculative-tokens":5, "method": "ngram"}']),
    "underscored flag": (None, ["--speculative_config", '{"method":"ngram","num_speculative_tokens":5}']),
    "dotted keys": (
        None,
        ["--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "5"],
    ),
    "dotted key with =": (None, ["--speculative-config.method=ngram", "--speculative-config.num_speculative_tokens=5"]),
    "--spec-tokens": (None, ["--model", "m", "--spec-method", "ngram", "--spec-tokens", "5"]),
    "--spec-tokens=": (None, ["--spec-method=ngram", "--spec-tokens=5", "--port", "8000"]),
    "legacy --num-speculative-tokens": (None, ["--speculative-model", "[ngram]", "--num-speculative-tokens", "5"]),
    "sh -c with single-quoted JSON": (
        ["sh", "-c"],
        ["""exec vllm serve m --speculative-config '{"method": "ngram", "num_speculative_tokens": 5}' --port 8000"""],
    ),
    "bash -c with escaped double quotes": (
        ["/bin/bash", "-lc"],
        ['vllm serve m --speculative-config "{\\"method\\":\\"ngram\\",\\"num_speculative_tokens\\":5}"'],
    ),
    "sh -c with --spec-tokens and a dotted key": (
        ["sh", "-c", "vllm serve m --spec-tokens=5 && echo --speculative-config.num_speculative_tokens '5'"],
        None,
    ),
    "JSON and a later dotted override": (
        None,
        ["--speculative-config", '{"method":"ngram","num_speculative_tokens":5}', "-sc.num_speculative_tokens", "5"],
    ),
}


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_every_spelling_is_rewritten_to_the_new_k_and_restored_byte_for_byte(name: str) -> None:
    command, args = SPELLINGS[name]
    assert spec_tokens.current_k(command, args) == 5
    done = spec_tokens.rewrite(command, args, 2)
    assert (done.old_k, done.new_k) == (5, 2)
    assert spec_tokens.current_k(done.command, done.args) == 2
    assert (done.command, done.args) != (command, args)
    # Only the number changed: everything else in the args reads the same.
    assert specargs.speculative_config_keys(done.command, done.args) == specargs.speculative_config_keys(command, args)
    record = json.loads(json.dumps(done.record))  # as it reads back from the annotation
    assert spec_tokens.restore(done.command, done.args, record) == (command, args)


def test_a_json_config_keeps_its_spacing_and_key_order() -> None:
    args = ["--speculative-config", '{ "model": "d",  "num_speculative_tokens" : 10, "method": "draft_model" }']
    done = spec_tokens.rewrite(None, args, 3)
    assert done.args == [
        "--speculative-config",
        '{ "model": "d",  "num_speculative_tokens" : 3, "method": "draft_model" }',
    ]


def test_the_record_holds_no_credential_and_a_credential_changed_since_still_restores() -> None:
    args = ["--spec-tokens", "5", "--api-key", "sk-secret", "--hf-token=hf_secret"]
    done = spec_tokens.rewrite(None, args, 1)
    text = json.dumps(done.record)
    assert "sk-secret" not in text and "hf_secret" not in text
    rotated = [a.replace("sk-secret", "sk-rotated") for a in done.args or []]
    assert spec_tokens.restore(None, rotated, done.record) == (None, [*args[:3], "sk-rotated", args[4]])


def test_args_edited_since_the_rewrite_are_not_restored_unless_forced() -> None:
    args = ["--model", "m", "--spec-tokens", "5"]
    done = spec_tokens.rewrite(None, args, 2)
    edited = [*(done.args or []), "--max-num-seqs", "64"]
    with pytest.raises(RestoreConflictError, match="args changed"):
        spec_tokens.restore(None, edited, done.record)
    assert spec_tokens.restore(None, edited, done.record, strict=False) == (None, [*args, "--max-num-seqs", "64"])
    # A forced restore still refuses when the rewritten number itself was changed by hand.
    by_hand = ["--model", "m", "--spec-tokens", "3"]
    with pytest.raises(RestoreConflictError, match="no longer reads"):
        spec_tokens.restore(None, by_hand, done.record, strict=False)


def test_a_config_without_a_number_of_tokens_cannot_be_rewritten_and_says_how_to_fix_it() -> None:
    args = ["--speculative-config", '{"method":"eagle3","model":"d"}']
    assert spec_tokens.current_k(None, args) is None
    with pytest.raises(spec_tokens.NotRewritableError, match="Set it in --speculative-config"):
        spec_tokens.rewrite(None, args, 2)
    with pytest.raises(spec_tokens.NotRewritableError, match="at least 1"):
        spec_tokens.rewrite(None, ["--spec-tokens", "5"], 0)


def test_disable_after_a_rewrite_then_enable_then_restore_gives_the_original_back() -> None:
    command, args = SPELLINGS["sh -c with single-quoted JSON"]
    reduced = spec_tokens.rewrite(command, args, 2)
    removal = specargs.remove(reduced.command, reduced.args)
    back_on = specargs.restore(removal.command, removal.args, removal.record)
    assert back_on == (reduced.command, reduced.args)
    assert spec_tokens.restore(*back_on, reduced.record) == (command, args)


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(st.sampled_from(["--port", "8000", "--model", "m", "--enforce-eager", "-tp", "2"]), max_size=5),
    after=st.lists(st.sampled_from(["--max-num-seqs", "16", "--api-key", "k", "--dtype=half"]), max_size=5),
    spelling=st.sampled_from(sorted(SPELLINGS)),
    k=st.integers(1, 12),
    shell=st.booleans(),
)
def test_rewrite_then_restore_is_the_identity_around_any_other_args(
    before: list[str], after: list[str], spelling: str, k: int, shell: bool
) -> None:
    command, args = SPELLINGS[spelling]
    if command is not None:
        return
    items = [*before, *(args or []), *after]
    fields: Fields = (["sh", "-c"], [shlex.join(["vllm", "serve", *items])]) if shell else (None, items)
    done = spec_tokens.rewrite(*fields, k)
    assert spec_tokens.current_k(done.command, done.args) == k
    assert spec_tokens.restore(done.command, done.args, json.loads(json.dumps(done.record))) == fields
