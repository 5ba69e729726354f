"""Properties of remove/restore over generated manifests: identity, nothing left, everything else untouched."""

from __future__ import annotations

import json
import shlex

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import specargs

VALUES = st.sampled_from(
    ['{"method": "ngram", "num_speculative_tokens": 3}', "ngram", "/models/draft", "4", "0.3", "-1", "a b"]
)
VALUED = [
    *sorted(specargs.CURRENT_FLAGS | specargs.LEGACY_FLAGS | specargs.DEPENDENT_FLAGS),
    "--speculative_config",
    "--num_speculative_tokens",
]


@st.composite
def spec_occurrence(draw: st.DrawFn) -> list[str]:
    shape = draw(st.sampled_from(["pair", "equals", "dotted", "switch"]))
    if shape == "switch":
        return ["--speculative-disable-mqa-scorer"]
    if shape == "dotted":
        root = draw(st.sampled_from(["--speculative-config", "--speculative_config", "-sc"]))
        key = f"{root}.{draw(st.sampled_from(['method', 'num_speculative_tokens', 'model']))}"
        value = draw(VALUES)
        return [key, value] if draw(st.booleans()) else [f"{key}={value}"]
    flag = draw(st.sampled_from(VALUED))
    value = draw(VALUES)
    return [flag, value] if shape == "pair" else [f"{flag}={value}"]


def is_plain(token: str) -> bool:
    return specargs.canonical_flag(token) is None


PLAIN_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\\\x00\r"), max_size=12
).filter(is_plain)
PLAIN = st.one_of(
    st.sampled_from(["--model", "/models/m", "--port", "8000", "--max-model-len", "1024", "--dtype", "float32"]),
    PLAIN_TEXT,
)


@st.composite
def mixed_args(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(all tokens, the plain ones in order). A plain token never directly follows a flag that wants a value."""
    tokens: list[str] = []
    plain: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            tokens.extend(draw(spec_occurrence()))
        else:
            token = draw(PLAIN)
            if token.startswith("-") and tokens and tokens[-1] == "--per-request-spec-decode-metrics":
                continue
            tokens.append(token)
            plain.append(token)
    return tokens, plain


def shell_join(tokens: list[str], separators: list[str]) -> str:
    out = "exec vllm serve"
    for i, token in enumerate(tokens):
        out += separators[i % len(separators)] + shlex.quote(token)
    return out


def shell_parse(script: str) -> list[str]:
    return shlex.split(script.replace("\\\n", ""))  # sh drops line continuations; shlex does not


@given(mixed_args())
def test_remove_then_restore_is_the_identity_on_lists(case: tuple[list[str], list[str]]) -> None:
    tokens, _ = case
    removal = specargs.remove(["vllm", "serve"], tokens)
    record = json.loads(json.dumps(removal.record))
    assert specargs.restore(removal.command, removal.args, record) == (["vllm", "serve"], tokens)


@given(mixed_args())
def test_no_speculation_flag_remains_in_lists_after_removal(case: tuple[list[str], list[str]]) -> None:
    tokens, _ = case
    removal = specargs.remove(None, tokens)
    assert specargs.find(removal.command, removal.args) == ()
    assert not any(specargs.canonical_flag(t) for t in removal.args or [])


@given(mixed_args())
def test_plain_args_are_untouched_and_in_order(case: tuple[list[str], list[str]]) -> None:
    tokens, plain = case
    assert specargs.remove(None, tokens).args == plain


@settings(max_examples=300)
@given(mixed_args(), st.lists(st.sampled_from([" ", "  ", " \\\n  ", "\t"]), min_size=1, max_size=3))
def test_shell_script_round_trip_is_byte_for_byte(case: tuple[list[str], list[str]], seps: list[str]) -> None:
    tokens, plain = case
    script = shell_join(tokens, seps)
    removal = specargs.remove(["/bin/bash", "-c"], [script])
    record = json.loads(json.dumps(removal.record))
    assert specargs.restore(removal.command, removal.args, record) == (["/bin/bash", "-c"], [script])
    assert removal.args is not None
    assert shell_parse(removal.args[0]) == ["exec", "vllm", "serve", *plain]
    assert specargs.find(removal.command, removal.args) == ()
