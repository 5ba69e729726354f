"""Write a per-batch-size schedule of K into the speculative config, and put the original back byte for byte.

The key is vLLM's ``num_speculative_tokens_per_batch_size`` (docs/engines.md, "K per batch size"); the value a
list such as ``[[1, 4, 3], [5, 256, 0]]`` (sidecar.core.load_schedule). Where it goes, in the spellings
:mod:`sidecar.core.specargs` knows:

- a JSON object (``--speculative-config JSON``, ``--speculative-config=JSON``, ``-sc JSON``, as list items or
  inside an ``sh -c`` string): the key is added before the object's closing brace, in compact JSON, with the
  quotes escaped as the text around it escapes them. Nothing else in the object changes. With several JSON
  objects, the last (the one vLLM reads) gets it.
- no JSON object, only dotted keys (``--speculative-config.method ngram``) or the shorthand flags
  (``--spec-method``, ``--spec-tokens``): a dotted key
  ``--speculative-config.num_speculative_tokens_per_batch_size=[[...]]`` is added after the last speculation
  flag (vLLM reads a dotted value as JSON and merges it with the shorthand keys).
- legacy flags only (vLLM before 0.8.3, which has no such key): not writable.

The :class:`ScheduleWrite` record is plain JSON like the other rewrite records: each changed list item or script
piece verbatim, before and after, and the args left by the write with the values of credential flags redacted
(to check before a restore that nobody edited them since). It holds no secret.

Also here, because the schedule's refusal and its last range need them: the engine's ``--max-num-seqs`` and
``--data-parallel-size`` as the args set them. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.core import config_edits, specargs
from sidecar.core.specargs import RestoreConflictError

RECORD_VERSION = 1
KEY = "num_speculative_tokens_per_batch_size"
DOTTED = f"--speculative-config.{KEY}"
# vLLM's spellings of the two engine options (argparse also takes '_' for '-' in the name).
MAX_NUM_SEQS = ("--max-num-seqs",)
DATA_PARALLEL_SIZE = ("--data-parallel-size", "-dp")


class NotWritableError(ValueError):
    """The args have no speculative config the schedule can go into, or one that has a schedule already."""


@dataclass(frozen=True)
class ScheduleWrite:
    command: list[str] | None
    args: list[str] | None
    value: list[list[int]]
    changed: tuple[str, ...]  # each written flag, as it reads after the write
    record: dict[str, Any]  # JSON-serialisable; feed it to restore()


def current_schedule(command: Sequence[str] | None, args: Sequence[str] | None) -> Any:
    """The schedule the args set (the last setting wins), or None."""
    found: Any = None
    for flag in specargs.find(command, args):
        name, value = _name_value(flag)
        _root, dot, dotted = name.partition(".")
        if flag.flag not in specargs.DOTTED_ROOTS:
            continue
        if dot and dotted.replace("-", "_") == KEY:
            found = _json(value, value)
        elif not dot:
            parsed = _json(value, None)
            if isinstance(parsed, dict):
                keys = [k for k in parsed if str(k).replace("-", "_") == KEY]
                if keys:
                    found = parsed[keys[-1]]
    return found


def write(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    value: list[list[int]],
    *,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> ScheduleWrite:
    """``command``/``args`` with the schedule ``value`` set; raises NotWritableError where it cannot go."""
    if current_schedule(command, args) is not None:
        raise NotWritableError(
            f"the speculative config already sets {KEY} (by hand or another tool); the sidecar does not "
            "overwrite it. Remove it from the args to let the sidecar write its schedule"
        )
    flags = [f for f in specargs.find(command, args) if f.kind is specargs.Kind.SPECULATION]
    objects = [f for f in flags if f.flag in specargs.DOTTED_ROOTS and _is_object(f)]
    fields: dict[str, list[str] | None] = {"command": _listed(command), "args": _listed(args)}
    compact = json.dumps(value, separators=(",", ":"))
    if objects:
        edit, changed = _into_object(fields, objects[-1], compact)
    else:
        current = [f for f in flags if f.flag in specargs.CURRENT_FLAGS]
        if not current:
            raise NotWritableError(
                "no speculative config in the args (only flags of vLLM before 0.8.3, which has no schedule of K): "
                "set speculation with --speculative-config to let the sidecar write a schedule"
            )
        edit, changed = _after_flag(fields, current[-1], compact)
    new_command, new_args = fields["command"], fields["args"]
    if current_schedule(new_command, new_args) != value:
        raise NotWritableError("the speculative config with the schedule does not read back as written")
    secrets = specargs.secret_flag_names(secret_flags)
    record = {
        "version": RECORD_VERSION,
        "key": KEY,
        "value": value,
        "edits": [edit],
        "after": {
            "command": specargs.redact(new_command, new_command, new_args, "command", secrets),
            "args": specargs.redact(new_args, new_command, new_args, "args", secrets),
        },
    }
    return ScheduleWrite(new_command, new_args, value, (changed,), record)


def restore(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    record: Mapping[str, Any],
    *,
    strict: bool = True,
) -> specargs.Fields:
    """Take out what :func:`write` put in. Strict: the fields must equal what the write left (a redacted value
    matches any value). Forced or not, each written piece must still read as the write left it."""
    if record.get("version") != RECORD_VERSION or record.get("key") != KEY:
        raise RestoreConflictError(f"unknown schedule record {record.get('key')!r} version {record.get('version')!r}")
    return config_edits.undo_edits(command, args, record, strict=strict, what="the schedule of K")


def engine_option(command: Sequence[str] | None, args: Sequence[str] | None, names: Sequence[str]) -> str | None:
    """The value of an engine option (``--name V`` or ``--name=V``, list items or inside ``sh -c``), last wins."""
    wanted = {_normal(n) for n in names}
    found: str | None = None
    for field, items in (("command", command), ("args", args)):
        listed = list(items or ())
        for index, item in enumerate(listed):
            words = listed[index:]
            if specargs.is_shell_script(command, args, field, index):
                words = [specargs.word_value(w.raw) for w in specargs.shell_words(item)]
                found = _last_value(words, wanted) or found
            else:
                value = _value_at(words, wanted)
                found = value if value is not None else found
    return found


def max_num_seqs(command: Sequence[str] | None, args: Sequence[str] | None) -> int | None:
    return _positive_int(engine_option(command, args, MAX_NUM_SEQS))


def data_parallel_size(command: Sequence[str] | None, args: Sequence[str] | None) -> int | None:
    return _positive_int(engine_option(command, args, DATA_PARALLEL_SIZE))


# --- internals -------------------------------------------------------------------------------------------


def _normal(name: str) -> str:
    return name if not name.startswith("--") else "--" + name[2:].replace("_", "-")


def _value_at(words: Sequence[str], wanted: set[str]) -> str | None:
    if not words:
        return None
    name, inline, value = words[0].partition("=")
    if _normal(name) not in wanted:
        return None
    if inline:
        return value
    return words[1] if len(words) > 1 else None


def _last_value(words: Sequence[str], wanted: set[str]) -> str | None:
    found: str | None = None
    for i in range(len(words)):
        value = _value_at(words[i:], wanted)
        found = value if value is not None else found
    return found


def _positive_int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def _listed(items: Sequence[str] | None) -> list[str] | None:
    return None if items is None else list(items)


def _json(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


def _name_value(flag: specargs.Flag) -> tuple[str, str]:
    words = [specargs.word_value(t) for t in flag.text] if flag.in_shell else list(flag.text)
    name, inline, inline_value = words[0].partition("=")
    return name, inline_value if inline else (words[1] if len(words) > 1 else "")


def _is_object(flag: specargs.Flag) -> bool:
    name, value = _name_value(flag)
    return "." not in name and isinstance(_json(value, None), dict)


def _insert_key(text: str, compact: str, *, escaped: bool) -> str:
    """``text`` with the key added before its last closing brace (a comma first unless the object is empty)."""
    brace = text.rindex("}")
    before = text[:brace].rstrip()
    quote = '\\"' if escaped else '"'
    separator = "" if before.endswith("{") else ","
    return f"{text[:brace]}{separator}{quote}{KEY}{quote}:{compact}{text[brace:]}"


def _into_object(fields: dict[str, list[str] | None], flag: specargs.Flag, compact: str) -> tuple[dict[str, Any], str]:
    items = fields[flag.field]
    assert items is not None
    if flag.in_shell:
        script = items[flag.index]
        for start, end, _match, words in specargs.shell_spans(script):
            if tuple(words) != flag.text:
                continue
            piece = script[start:end]
            new_piece = _insert_key(piece, compact, escaped='\\"' in piece)
            items[flag.index] = script[:start] + new_piece + script[end:]
            edit = {"field": flag.field, "index": flag.index, "spans": [[start, piece, new_piece]]}
            return edit, new_piece.strip()
        raise NotWritableError("the speculative config was not found again in its shell script")
    index = flag.index if "=" in flag.text[0] and len(flag.text) == 1 else flag.index + 1
    old = items[index]
    items[index] = _insert_key(old, compact, escaped=False)
    changed = " ".join(items[flag.index : flag.index + len(flag.text)])
    return {"field": flag.field, "index": index, "old": old, "new": items[index]}, changed


def _after_flag(fields: dict[str, list[str] | None], flag: specargs.Flag, compact: str) -> tuple[dict[str, Any], str]:
    items = fields[flag.field]
    assert items is not None
    if flag.in_shell:
        script = items[flag.index]
        for _start, end, _match, words in specargs.shell_spans(script):
            if tuple(words) != flag.text:
                continue
            inserted = f" {DOTTED}='{compact}'"
            items[flag.index] = script[:end] + inserted + script[end:]
            edit = {"field": flag.field, "index": flag.index, "spans": [[end, "", inserted]]}
            return edit, inserted.strip()
        raise NotWritableError("the speculation flag was not found again in its shell script")
    item = f"{DOTTED}={compact}"
    index = flag.index + len(flag.text)
    items.insert(index, item)
    return {"field": flag.field, "index": index, "insert": item}, item
