"""Safety of a config write: check it before, watch its rollout after, and put back what ran if it never gets ready.

A write that changes the engine container's args (a disable, an enable, any rewrite of the speculative config)
rolls the pods, and the new engine may never start: a key its version does not know, a value it refuses, a draft
that no longer fits in memory. The Deployment then stays half rolled out (its old pods serve on while the new
ones fail), and nothing automatic should act on it further. So:

- before: :func:`config_refusal` refuses a speculative config the engine has not been seen starting with when
  the image's vLLM version would reject one of its keys (unknown keys are fatal at start);
- with the write: :func:`watch_for` describes how to undo it, and the actuator stores that in the same patch
  (annotation ``spec-sidecar.io/rollout-watch``);
- after: :func:`verdict` says whether the rollout is still pending, done, superseded by someone else's write, or
  overdue; overdue means :func:`revert_plan`: the previous args/command, byte for byte, the previous control
  record, and a latch that only a human clears.

The undo holds only the text the write changed (a character-level diff of the args and command), never the
whole args: those may carry credentials, and the annotation is readable by whoever reads the Deployment. If a
credential's value falls inside the changed text, no undo is kept (the watch still latches and alerts).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sidecar.core import annotations as ann
from sidecar.core import specargs, vllm_versions
from sidecar.core.annotations import ControlRecord

WATCH = ann.PREFIX + "rollout-watch"
# A latch written by a revert starts with this, so that metrics and alerts tell it from a flap latch.
REVERT_LATCH = "rollout not ready"
_VERSION = 1
# The control record's annotations a revert puts back as they were before the write (the history and the kept
# TPOT windows go on: the failed write happened, and the windows are measurements).
_RESTORED_KEYS = tuple(k for k in ann.KEYS if k not in (ann.HISTORY, ann.SPEED, ann.LATCHED, ann.PIN))


class Progress(StrEnum):
    NONE = "none"  # nothing written is being watched
    PENDING = "pending"  # the written config is rolling out, within the bound
    READY = "ready"  # it rolled out: the watch can be dropped
    SUPERSEDED = "superseded"  # the args are no longer what was written (someone else's change): not ours to judge
    OVERDUE = "overdue"  # not ready within the bound: revert and latch


@dataclass(frozen=True)
class RolloutWatch:
    """What a config write left on the target so that any sidecar can judge and undo its rollout."""

    action: str  # the write being watched: disable | enable | reduce-k ...
    at: float  # when it was written
    written: str  # digest of the container's command and args as written (no secret can be read back from it)
    undo: tuple[tuple[int, int, str], ...] | None  # edits turning the written text back into the previous one
    previous: Mapping[str, str]  # the control record's annotations before the write (restored on revert)


def _text(command: Sequence[str] | None, args: Sequence[str] | None) -> str:
    """The container's command and args as one text: what the undo edits, and what the digest is taken of."""
    return json.dumps(
        [None if command is None else list(command), None if args is None else list(args)], separators=(",", ":")
    )


def digest(command: Sequence[str] | None, args: Sequence[str] | None) -> str:
    return hashlib.sha256(_text(command, args).encode()).hexdigest()[:32]


def watch_for(
    action: str,
    now: float,
    *,
    before: tuple[Sequence[str] | None, Sequence[str] | None],
    after: tuple[Sequence[str] | None, Sequence[str] | None],
    previous: ControlRecord,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> RolloutWatch:
    """The watch for a write turning the container's (command, args) ``before`` into ``after``."""
    old, new = _text(*before), _text(*after)
    edits: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []  # where in the previous text each edit's replacement comes from
    matcher = difflib.SequenceMatcher(None, new, old, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            edits.append((i1, i2, old[j1:j2]))
            taken.append((j1, j2))
    # Any overlap with a credential, even one character of it, and no undo is kept.
    hidden = _spans(old, _secret_values(*before, secret_flags))
    leaks = any(j1 < end and start < j2 for j1, j2 in taken for start, end in hidden)
    undo = None if leaks else tuple(edits)
    prior = {k: v for k, v in ann.to_annotations(previous).items() if k in _RESTORED_KEYS and v is not None}
    return RolloutWatch(action, ann.stored_time(now), digest(*after), undo, prior)


def _secret_values(command: Sequence[str] | None, args: Sequence[str] | None, flags: Sequence[str]) -> set[str]:
    """The credential values in the container's args (as ``redact`` finds them), to keep them out of the undo."""
    names = specargs.secret_flag_names(flags)
    found: set[str] = set()
    for field, items in (("command", command), ("args", args)):
        if items is None:
            continue
        redacted = specargs.redact(items, command, args, field, names) or []
        for live, shown in zip(items, redacted, strict=True):
            if live != shown:  # this item holds a credential: keep every piece of it that is not shown as is
                found.update(p for p in _hidden_parts(live, shown) if p)
    return found


def _spans(text: str, values: set[str]) -> list[tuple[int, int]]:
    """Every place in ``text`` (the JSON of the lists) where one of ``values`` stands, as JSON spells it."""
    spans: list[tuple[int, int]] = []
    for value in values:
        needle = json.dumps(value)[1:-1]
        start = text.find(needle)
        while start >= 0:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    return spans


def _hidden_parts(live: str, shown: str) -> list[str]:
    matcher = difflib.SequenceMatcher(None, shown, live, autojunk=False)
    return [live[j1:j2] for tag, _, _, j1, j2 in matcher.get_opcodes() if tag in ("replace", "insert")]


def undone(watch: RolloutWatch, command: Sequence[str] | None, args: Sequence[str] | None) -> tuple[Any, Any] | None:
    """The (command, args) that ran before the watched write, or None if they cannot be rebuilt exactly (no undo
    kept, or the live args are not the ones written)."""
    if watch.undo is None or digest(command, args) != watch.written:
        return None
    text = _text(command, args)
    for i1, i2, replacement in sorted(watch.undo, reverse=True):
        text = text[:i1] + replacement + text[i2:]
    try:
        old_command, old_args = json.loads(text)
    except ValueError:
        return None
    return old_command, old_args


def verdict(
    watch: RolloutWatch | None,
    current: tuple[Sequence[str] | None, Sequence[str] | None],
    rollout_complete: bool,
    now: float,
    *,
    timeout: float,
) -> Progress:
    """Where the watched write's rollout stands, with the container's (command, args) ``current`` as read.
    ``timeout`` <= 0 never finds it overdue (the watch then only records and settles)."""
    if watch is None:
        return Progress.NONE
    if digest(*current) != watch.written:
        return Progress.SUPERSEDED
    if rollout_complete:
        return Progress.READY
    if timeout > 0 and now - watch.at >= timeout:
        return Progress.OVERDUE
    return Progress.PENDING


def revert_record(watch: RolloutWatch, current: ControlRecord, latch: str) -> ControlRecord:
    """The control record after a revert: as it was before the write, with the history and pin as they are now
    and the latch set."""
    merged = dict(ann.to_annotations(current))
    for key in _RESTORED_KEYS:
        merged[key] = watch.previous.get(key)
    merged[ann.LATCHED] = latch
    before = ann.from_annotations({k: v for k, v in merged.items() if v is not None})
    return replace(before, history=current.history, pin=current.pin, speed=current.speed)


def revert_latch(watch: RolloutWatch, timeout: float, restored: bool) -> str:
    what = "the previous config was restored" if restored else "the previous config could NOT be restored"
    return (
        f"{REVERT_LATCH}: the pods of the config written by {watch.action} at {ann.timestamp(watch.at)} "
        f"were not all ready within {timeout:.0f}s; {what}"
    )


def is_revert_latch(latched: str | None) -> bool:
    return bool(latched) and str(latched).startswith(REVERT_LATCH)


# --- the annotation --------------------------------------------------------------------------------------


def encode(watch: RolloutWatch) -> str:
    return json.dumps(
        {
            "v": _VERSION,
            "action": watch.action,
            "at": ann.timestamp(watch.at),
            "written": watch.written,
            "undo": None if watch.undo is None else [list(e) for e in watch.undo],
            "previous": dict(watch.previous),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def decode(text: str | None) -> RolloutWatch | None:
    """The watch in an annotation; None for none or a malformed one (a hand edit is read as no watch)."""
    try:
        raw = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != _VERSION:
        return None
    at = ann.parse_timestamp(str(raw.get("at", "")))
    previous = raw.get("previous")
    if at is None or not isinstance(raw.get("written"), str) or not isinstance(previous, dict):
        return None
    try:
        undo = _undo(raw.get("undo"))
    except ValueError:
        return None
    return RolloutWatch(
        str(raw.get("action", "")),
        at,
        raw["written"],
        undo,
        {str(k): str(v) for k, v in previous.items()},
    )


def _undo(raw: Any) -> tuple[tuple[int, int, str], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValueError("undo is not a list")
    out: list[tuple[int, int, str]] = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(n, int) and n >= 0 for n in item[:2])
            or not isinstance(item[2], str)
        ):
            raise ValueError(f"not an edit: {item!r}")
        out.append((item[0], item[1], item[2]))
    return tuple(out)


# --- before the write ------------------------------------------------------------------------------------


def config_refusal(
    image: str | None,
    before: tuple[Sequence[str] | None, Sequence[str] | None],
    after: tuple[Sequence[str] | None, Sequence[str] | None],
) -> str | None:
    """Why the engine would not start with the speculative config of ``after``, or None.

    Checked only when the write brings in a key the running engine was not started with (the keys of ``before``
    it did start with), and only on a vLLM version whose keys are known (the image's tag names it). Otherwise the
    rollout watch is what protects the Deployment.
    """
    keys = specargs.speculative_config_keys(*after)
    new = keys - specargs.speculative_config_keys(*before)
    if not new:
        return None
    version = vllm_versions.image_version(image)
    rejected = vllm_versions.rejected_keys(new, version)
    if version is None or not rejected:
        return None
    names = ", ".join(rejected)
    return (
        f"the new speculative config sets {names}, which vLLM {vllm_versions.version_text(version)} ({image}) does "
        f"not know: it would refuse to start. Nothing was written; write a config without "
        f"{'that key' if len(rejected) == 1 else 'those keys'}, or upgrade the engine image first"
    )
