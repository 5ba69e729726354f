"""Writing the schedule of K into the speculative config (sidecar.core.schedule_config), and restoring it."""

from __future__ import annotations

import json
import shlex

import pytest

from sidecar.core import schedule_config, specargs
from sidecar.core.schedule_config import NotWritableError, current_schedule, restore, write

VALUE = [[1, 4, 3], [5, 256, 0]]
SERVE = ["vllm", "serve", "m"]


@pytest.mark.parametrize(
    "args",
    [
        ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}', "--port", "8000"],
        ['--speculative-config={"method":"ngram","num_speculative_tokens":3}'],
        ["-sc", '{"method": "ngram",\n  "num_speculative_tokens": 3 }'],
        ["--speculative_config", "{}"],
        ["--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "3", "--port", "8"],
        ["--spec-method", "ngram", "--spec-tokens", "3"],
        ["--spec-method=ngram", "--spec-tokens=3", "--max-num-seqs", "64"],
    ],
)
def test_every_list_spelling_takes_the_schedule_and_restores_byte_for_byte(args: list[str]) -> None:
    done = write(None, [*SERVE, *args], VALUE)
    assert current_schedule(done.command, done.args) == VALUE
    assert done.record["value"] == VALUE
    json.dumps(done.record)  # plain JSON, for an annotation
    assert restore(done.command, done.args, done.record) == (None, [*SERVE, *args])


@pytest.mark.parametrize(
    "script",
    [
        """vllm serve m --speculative-config '{"method": "ngram", "num_speculative_tokens": 3}' --port 8000""",
        """exec vllm serve m --speculative-config "{\\"method\\": \\"ngram\\", \\"num_speculative_tokens\\": 3}" """,
        "vllm serve m --spec-method ngram --spec-tokens 3 && echo done",
        "vllm serve m --speculative-config.method ngram --speculative-config.num_speculative_tokens 3",
    ],
)
def test_a_shell_string_takes_the_schedule_where_sh_reads_it_and_restores_byte_for_byte(script: str) -> None:
    command = ["sh", "-c", script]
    done = write(command, None, VALUE)
    assert current_schedule(done.command, done.args) == VALUE
    assert done.command is not None
    words = shlex.split(done.command[2].split("&&")[0])
    assert any(schedule_config.KEY in w for w in words)  # sh hands vLLM one word holding the key
    assert restore(done.command, done.args, done.record) == (command, None)


def test_the_json_keeps_every_other_key_and_its_spacing() -> None:
    args = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    done = write(None, args, VALUE)
    assert done.args == [
        "--speculative-config",
        '{"method": "ngram", "num_speculative_tokens": 3,"num_speculative_tokens_per_batch_size":[[1,4,3],[5,256,0]]}',
    ]
    assert json.loads(done.args[1])["method"] == "ngram"


def test_a_schedule_set_by_hand_is_not_overwritten() -> None:
    args = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens_per_batch_size": [[1, 8, 2]]}']
    with pytest.raises(NotWritableError, match="already sets"):
        write(None, args, VALUE)


def test_legacy_flags_have_no_schedule_to_take() -> None:
    with pytest.raises(NotWritableError, match=r"before 0\.8\.3"):
        write(None, ["--speculative-model", "d", "--num-speculative-tokens", "3"], VALUE)


def test_an_edit_since_the_write_stops_a_strict_restore_but_not_a_forced_one() -> None:
    args = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    done = write(None, args, VALUE)
    assert done.args is not None
    edited = [*done.args, "--port", "9000"]
    with pytest.raises(specargs.RestoreConflictError):
        restore(None, edited, done.record)
    assert restore(None, edited, done.record, strict=False) == (None, [*args, "--port", "9000"])


def test_the_record_holds_no_credential() -> None:
    args = ["--api-key", "s3cr3t", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    done = write(None, args, VALUE)
    assert "s3cr3t" not in json.dumps(done.record)
    assert restore(None, done.args, done.record) == (None, args)


def test_max_num_seqs_and_data_parallel_size_are_read_in_every_spelling() -> None:
    assert schedule_config.max_num_seqs(None, ["serve", "--max-num-seqs", "64"]) == 64
    assert schedule_config.max_num_seqs(None, ["--max_num_seqs=32"]) == 32
    assert schedule_config.max_num_seqs(["sh", "-c", "vllm serve m --max-num-seqs 16"], None) == 16
    assert schedule_config.max_num_seqs(None, ["serve"]) is None
    assert schedule_config.data_parallel_size(None, ["-dp", "2"]) == 2
    assert schedule_config.data_parallel_size(None, ["--data-parallel-size=4"]) == 4
    assert schedule_config.data_parallel_size(["bash", "-c", "vllm serve m --data_parallel_size 2"], None) == 2
