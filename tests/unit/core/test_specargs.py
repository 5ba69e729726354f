"""Examples of every spelling docs/engines.md lists, as list items, with ``=``, in ``command`` and under ``sh -c``."""

from __future__ import annotations

import json
import shlex

import pytest

from sidecar.core import specargs
from sidecar.core.specargs import Kind, RestoreConflictError

NGRAM = '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}'


def roundtrip(command: list[str] | None, args: list[str] | None) -> specargs.Removal:
    removal = specargs.remove(command, args)
    record = json.loads(json.dumps(removal.record))  # what the annotation stores
    assert specargs.restore(removal.command, removal.args, record) == (command, args)
    return removal


@pytest.mark.parametrize(
    ("spec", "flag"),
    [
        (["--speculative-config", NGRAM], "--speculative-config"),
        ([f"--speculative-config={NGRAM}"], "--speculative-config"),
        (["--speculative_config", NGRAM], "--speculative-config"),
        (["--speculative-config.method", "ngram"], "--speculative-config"),
        (["--speculative_config.num_speculative_tokens=3"], "--speculative-config"),
        (["-sc", NGRAM], "-sc"),
        (["-sc.method", "ngram"], "-sc"),
        (["--spec-method", "ngram"], "--spec-method"),
        (["--spec-model", "/models/draft"], "--spec-model"),
        (["--spec-tokens=4"], "--spec-tokens"),
        (["--speculative-model", "/models/draft"], "--speculative-model"),
        (["--num-speculative-tokens", "5"], "--num-speculative-tokens"),
        (["--speculative-draft-tensor-parallel-size", "1"], "--speculative-draft-tensor-parallel-size"),
        (["-spec-draft-tp", "1"], "-spec-draft-tp"),
        (["--speculative-disable-by-batch-size=4"], "--speculative-disable-by-batch-size"),
        (["--spec-decoding-acceptance-method", "typical_acceptance_sampler"], "--spec-decoding-acceptance-method"),
        (
            ["--typical-acceptance-sampler-posterior-threshold", "0.09"],
            "--typical-acceptance-sampler-posterior-threshold",
        ),
        (["--typical-acceptance-sampler-posterior-alpha", "0.3"], "--typical-acceptance-sampler-posterior-alpha"),
        (["--ngram-prompt-lookup-max", "4"], "--ngram-prompt-lookup-max"),
        (["--ngram-prompt-lookup-min=1"], "--ngram-prompt-lookup-min"),
        (["--speculative-max-model-len", "2048"], "--speculative-max-model-len"),
        (["--speculative-model-quantization", "fp8"], "--speculative-model-quantization"),
        (["--speculative-disable-mqa-scorer"], "--speculative-disable-mqa-scorer"),
    ],
)
def test_each_spelling_is_removed_from_args_and_restored_exactly(spec: list[str], flag: str) -> None:
    args = ["--model", "/models/m", *spec, "--max-model-len", "1024"]
    removal = roundtrip(None, args)
    assert removal.args == ["--model", "/models/m", "--max-model-len", "1024"]
    assert [(f.flag, f.kind, list(f.text)) for f in removal.removed] == [(flag, Kind.SPECULATION, spec)]
    assert specargs.speculation_configured(None, args)
    assert not specargs.speculation_configured(None, removal.args)


def test_per_request_metrics_flag_goes_with_speculation_so_the_engine_still_starts() -> None:
    args = ["--speculative-config", NGRAM, "--per-request-spec-decode-metrics", "summary", "--port", "8000"]
    removal = roundtrip(None, args)
    assert removal.args == ["--port", "8000"]
    assert {f.kind for f in removal.removed} == {Kind.SPECULATION, Kind.DEPENDENT}


def test_dependent_flag_alone_does_not_count_as_speculation_configured() -> None:
    assert not specargs.speculation_configured(None, ["--per-request-spec-decode-metrics=detailed"])


def test_flags_in_command_are_removed_and_restored() -> None:
    command = ["python", "-m", "vllm.entrypoints.openai.api_server", "--spec-tokens", "3", "--spec-method", "ngram"]
    removal = roundtrip(command, ["--port", "8000"])
    assert removal.command == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert removal.args == ["--port", "8000"]


def test_shell_string_keeps_everything_else_byte_for_byte() -> None:
    script = (
        "pip list >/dev/null && exec python -m vllm.entrypoints.openai.api_server --model /m \\\n"
        f"  --speculative-config '{NGRAM}' \\\n"
        "  --per-request-spec-decode-metrics=summary \\\n"
        "  --port 8000; echo exited"
    )
    removal = roundtrip(["/bin/sh", "-c"], [script])
    assert removal.args == [
        "pip list >/dev/null && exec python -m vllm.entrypoints.openai.api_server --model /m \\\n"
        "  --port 8000; echo exited"
    ]
    assert [f.in_shell for f in removal.removed] == [True, True]


def test_shell_string_spread_over_command_and_args_is_recognised() -> None:
    removal = roundtrip(["bash", "-lc", "vllm serve /m --speculative-model=/d --num-speculative-tokens 5"], None)
    assert removal.command == ["bash", "-lc", "vllm serve /m"]


def test_args_starting_with_dash_c_under_an_unknown_entrypoint_are_treated_as_a_script() -> None:
    removal = roundtrip(None, ["-c", "vllm serve /m --spec-tokens 2 --port 1"])
    assert removal.args == ["-c", "vllm serve /m --port 1"]


def test_a_script_that_starts_with_a_flag_loses_the_whitespace_after_it() -> None:
    removal = roundtrip(["sh", "-c"], ["--spec-tokens 2   rest"])
    assert removal.args == ["rest"]


def test_adjacent_flags_in_a_script_are_cut_without_overlap() -> None:
    script = "--spec-tokens 2 --spec-method ngram --port 1"
    removal = roundtrip(["sh", "-c"], [script])
    assert shlex.split(removal.args[0] if removal.args else "") == ["--port", "1"]


def test_json_value_that_contains_spaces_is_not_mistaken_for_a_shell_script() -> None:
    removal = roundtrip(["vllm", "serve"], ["/m", "--speculative-config", NGRAM])
    assert removal.args == ["/m"]


def test_plain_program_args_that_mention_flags_in_a_string_are_left_alone() -> None:
    # Not under `sh -c`: the string is one argv item that vLLM would reject anyway; not ours to edit.
    args = ["--served-model-name", "m --spec-tokens 3"]
    removal = specargs.remove(None, args)
    assert removal.args == args and not removal.changed


def test_negative_numbers_are_values_not_options() -> None:
    removal = roundtrip(None, ["--speculative-disable-by-batch-size", "-1", "--port", "1"])
    assert removal.args == ["--port", "1"]


def test_a_value_that_is_an_option_is_not_swallowed() -> None:
    removal = roundtrip(None, ["--spec-tokens", "--port", "1"])
    assert removal.args == ["--port", "1"]


def test_nothing_to_remove_gives_an_unchanged_copy_and_an_empty_record() -> None:
    args = ["--model", "m"]
    removal = roundtrip(None, args)
    assert removal.args == args and removal.args is not args
    assert not removal.changed and removal.record["edits"] == []


def test_strict_restore_refuses_when_args_changed_since_removal() -> None:
    removal = specargs.remove(None, ["--spec-tokens", "3", "--port", "1"])
    with pytest.raises(RestoreConflictError):
        specargs.restore(None, ["--port", "2"], removal.record)


def test_lenient_restore_reinserts_at_the_recorded_positions() -> None:
    removal = specargs.remove(None, ["--port", "1", "--spec-tokens", "3"])
    assert specargs.restore(None, ["--port", "2"], removal.record, strict=False) == (
        None,
        ["--port", "2", "--spec-tokens", "3"],
    )


def test_restore_rejects_an_unknown_record_version() -> None:
    with pytest.raises(RestoreConflictError):
        specargs.restore(None, [], {"version": 99, "edits": [], "after": {}})
