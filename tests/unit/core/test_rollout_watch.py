"""The rollout watch on plain data: the undo rebuilds the previous args exactly and holds no credential, the
verdict, the annotation, the record a revert writes, and the config check before a write."""

from __future__ import annotations

import json

import pytest

from sidecar.core import annotations as ann
from sidecar.core import rollout_watch as rw
from sidecar.core import specargs
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.rollout_watch import Progress

T0 = 1_800_000_000.0
CONFIG = '{"method": "draft_model", "model": "/models/draft", "num_speculative_tokens": 4}'
ARGS = ["--model", "/m", "--api-key", "sk-very-secret", "--speculative-config", CONFIG, "--port", "8000"]
SCRIPT = ["sh", "-c"]
SCRIPT_ARGS = [f"exec vllm serve /m --api-key=sk-very-secret --speculative-config '{CONFIG}' --port 8000"]


def disabled(command: list[str] | None, args: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    removal = specargs.remove(command, args)
    return removal.command, removal.args


@pytest.mark.parametrize(("command", "args"), [(None, ARGS), (SCRIPT, SCRIPT_ARGS)], ids=["list", "sh -c"])
def test_the_undo_rebuilds_the_previous_command_and_args_exactly_and_holds_no_credential(
    command: list[str] | None, args: list[str]
) -> None:
    after = disabled(command, args)
    watch = rw.watch_for("disable", T0, before=(command, args), after=after, previous=ControlRecord())
    assert watch.undo is not None
    assert rw.undone(watch, *after) == (command, args)
    assert "sk-very-secret" not in rw.encode(watch)
    assert rw.decode(rw.encode(watch)) == watch


def test_no_undo_is_kept_when_a_credential_is_part_of_the_changed_text() -> None:
    before = ["--api-key", "sk-very-secret", "--speculative-config", CONFIG]
    after = ["--api-key", "sk-other", "--speculative-config", CONFIG]  # the write changed the key itself
    watch = rw.watch_for("rewrite", T0, before=(None, before), after=(None, after), previous=ControlRecord())
    assert watch.undo is None
    assert "sk-very-secret" not in rw.encode(watch)
    assert rw.undone(watch, None, after) is None


def test_the_undo_applies_only_to_the_args_as_written() -> None:
    after = disabled(None, ARGS)
    watch = rw.watch_for("disable", T0, before=(None, ARGS), after=after, previous=ControlRecord())
    edited = [*(after[1] or []), "--enforce-eager"]
    assert rw.undone(watch, None, edited) is None


def test_the_verdict_waits_within_the_bound_then_finds_it_overdue_and_ready_wins() -> None:
    after = disabled(None, ARGS)
    watch = rw.watch_for("disable", T0, before=(None, ARGS), after=after, previous=ControlRecord())
    assert rw.verdict(None, after, False, T0, timeout=600) is Progress.NONE
    assert rw.verdict(watch, after, False, T0 + 599, timeout=600) is Progress.PENDING
    assert rw.verdict(watch, after, False, T0 + 600, timeout=600) is Progress.OVERDUE
    assert rw.verdict(watch, after, True, T0 + 6000, timeout=600) is Progress.READY
    assert rw.verdict(watch, (None, ARGS), False, T0 + 6000, timeout=600) is Progress.SUPERSEDED
    assert rw.verdict(watch, after, False, T0 + 1e9, timeout=0) is Progress.PENDING  # 0: never reverts


@pytest.mark.parametrize(
    "text",
    [None, "", "not json", "[]", '{"v": 2}', '{"v": 1, "at": "x", "written": "a", "previous": {}}',
     '{"v": 1, "at": "2027-01-15T08:00:00.000Z", "written": "a", "previous": {}, "undo": [[1, "x", "y"]]}'],
)  # fmt: skip
def test_a_missing_or_malformed_watch_annotation_reads_as_no_watch(text: str | None) -> None:
    assert rw.decode(text) is None


def test_a_revert_puts_the_previous_record_back_keeps_history_and_pin_and_latches() -> None:
    before = ControlRecord(state="on", reason="manual", changed_at=T0 - 100, changed_by=By.MANUAL)
    after_write = before.toggled(T0, "disable", By.SIDECAR, "low_acceptance", {"v": 2, "args": []})
    watch = rw.watch_for("disable", T0, before=(None, ARGS), after=disabled(None, ARGS), previous=before)
    latch = rw.revert_latch(watch, 600, restored=True)
    reverted = rw.revert_record(watch, after_write, latch)
    assert (reverted.state, reverted.reason, reverted.changed_by, reverted.removed) == ("on", "manual", By.MANUAL, None)
    assert reverted.history == after_write.history  # the failed write happened, and counts
    assert reverted.latched == latch and rw.is_revert_latch(reverted.latched)
    assert not rw.is_revert_latch("3 automatic toggles within 21600s")
    assert ann.timestamp(T0) in latch


def test_a_new_key_the_engines_version_does_not_know_is_refused_before_the_write() -> None:
    old = (None, ["--speculative-config", CONFIG])
    new_config = json.dumps({**json.loads(CONFIG), "disable_padded_drafter_batch": True})
    new = (None, ["--speculative-config", new_config])
    refusal = rw.config_refusal("vllm/vllm-openai:v0.34.0", old, new)
    assert refusal is not None
    assert "disable_padded_drafter_batch" in refusal and "0.34.0" in refusal and "Nothing was written" in refusal
    assert rw.config_refusal("vllm/vllm-openai:v0.33.1", old, new) is None  # 0.33 still knows it
    assert rw.config_refusal("registry.local/engine:custom", old, new) is None  # unknown version: the watch guards
    # A key the engine is running with now is not new: changing its value is checked by the rollout watch.
    assert rw.config_refusal("vllm/vllm-openai:v0.34.0", new, new) is None
    typo = (None, ["--speculative-config", json.dumps({**json.loads(CONFIG), "num_speculative_token": 2})])
    assert rw.config_refusal("vllm/vllm-openai:v0.32.0", old, typo) is not None
