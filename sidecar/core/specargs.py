"""Find, remove and restore vLLM's speculative-decoding flags in a container's ``command`` and ``args``.

Spellings (docs/engines.md#turning-speculation-on-and-off): current ``--speculative-config JSON`` (also ``=JSON``,
``--speculative_config``, dotted keys ``--speculative-config.method ngram``, ``-sc``, ``--spec-method``,
``--spec-model``, ``--spec-tokens``) and the legacy flags removed in vLLM 0.8.3. Every flag may appear as
``--flag value`` or ``--flag=value``, as list items, or inside one ``sh -c`` / ``bash -c`` string.

Removing also drops what only works while speculation is on (``--per-request-spec-decode-metrics``: vLLM
refuses to start with it and no speculation). A :class:`Removal` records each removed piece verbatim with its
position in the original lists, as plain JSON, so :func:`restore` rebuilds the original byte for byte.
Not recognised: argparse prefix abbreviations (``--speculative-conf``) and flags hidden in env variables.

The record is written where anyone who may read the Deployment reads it, so it holds no secret: only the
speculation flags' own text and their positions, plus the args left after the removal with the values of
credential flags (``--api-key``, ``--hf-token``, ... : ``secret_flags``) replaced by ``<redacted>``. Those are
only compared with the live args before a restore (a redacted value matches any value there); everything a
restore puts back around the speculation flags comes from the live spec, so the original is rebuilt byte for
byte all the same. Records of version 1 (before redaction) are still read and restored, and
:func:`upgraded_record` rewrites one that holds a credential as the version 2 record that says the same.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: "after" as written, secrets included (read, never written any more)

# Flags whose values are credentials: never written to a record. vLLM's own: the API keys of its server, the
# Hugging Face token, the S3 keys of the tensorizer loader. ``--secret-flags`` replaces the list.
DEFAULT_SECRET_FLAGS = ("--api-key", "--hf-token", "--s3-access-key-id", "--s3-secret-access-key")
REDACTED = "<redacted>"

# Flags that configure speculation; each takes exactly one value.
CURRENT_FLAGS = frozenset({"--speculative-config", "-sc", "--spec-method", "--spec-model", "--spec-tokens"})
LEGACY_FLAGS = frozenset(
    {
        "--speculative-model",
        "--num-speculative-tokens",
        "--speculative-draft-tensor-parallel-size",
        "-spec-draft-tp",
        "--speculative-disable-by-batch-size",
        "--spec-decoding-acceptance-method",
        "--typical-acceptance-sampler-posterior-threshold",
        "--typical-acceptance-sampler-posterior-alpha",
        "--ngram-prompt-lookup-max",
        "--ngram-prompt-lookup-min",
        "--speculative-max-model-len",
        "--speculative-model-quantization",
    }
)
# Legacy on/off switch (store_true in vLLM 0.6-0.8.2): no value follows it.
LEGACY_SWITCHES = frozenset({"--speculative-disable-mqa-scorer"})
# Valid only while speculation is configured: vLLM refuses to start with these and no speculation.
DEPENDENT_FLAGS = frozenset({"--per-request-spec-decode-metrics"})
# Roots that accept dotted keys (``--speculative-config.method ngram``); a dotted key always takes a value.
DOTTED_ROOTS = frozenset({"--speculative-config", "-sc"})
# The shorthand flags (vLLM 0.32 and later) and the speculative-config key each one sets.
SHORTHAND_KEYS = {"--spec-method": "method", "--spec-model": "model", "--spec-tokens": "num_speculative_tokens"}

SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"})
_SHELL_SCRIPT_OPTION = re.compile(r"^-[a-zA-Z]*c[a-zA-Z]*$")  # -c, -lc, -ec, -xec ...
_NEGATIVE_NUMBER = re.compile(r"^-\d+(\.\d*)?$")
_OPERATORS = ("&&", "||", ";;", ";", "&", "|", "\n")
Fields = tuple[list[str] | None, list[str] | None]


class Kind(StrEnum):
    SPECULATION = "speculation"
    DEPENDENT = "dependent"


@dataclass(frozen=True)
class Flag:
    """One occurrence of a flag: where it is and the exact text it spans."""

    field: str  # "command" | "args"
    index: int  # item index in the field's list
    flag: str  # canonical spelling, e.g. "--speculative-config"
    kind: Kind
    text: tuple[str, ...]  # the list items, or the shell words, as written
    in_shell: bool


class RestoreConflictError(ValueError):
    """The container no longer looks like the result of the recorded removal."""


@dataclass(frozen=True)
class Removal:
    command: list[str] | None
    args: list[str] | None
    removed: tuple[Flag, ...]
    record: dict[str, Any]  # JSON-serialisable; feed it to restore()

    @property
    def changed(self) -> bool:
        return bool(self.removed)


@dataclass(frozen=True)
class _Match:
    flag: str
    kind: Kind
    takes_value: bool
    dotted: bool


def canonical_flag(token: str) -> _Match | None:
    """The flag a token names, normalised the way vLLM's FlexibleArgumentParser does, or None."""
    if not token.startswith("-") or _NEGATIVE_NUMBER.match(token):
        return None
    key, has_inline_value = token.split("=", 1)[0], "=" in token
    root, dot, _ = key.partition(".")
    if key.startswith("--"):
        root = root.replace("_", "-")  # vLLM accepts underscores in names (before the first dot)
    root = root.removesuffix("+")
    dotted = bool(dot)
    if dotted and root not in DOTTED_ROOTS:
        return None
    if root in CURRENT_FLAGS or root in LEGACY_FLAGS:
        return _Match(root, Kind.SPECULATION, not has_inline_value, dotted)
    if root in LEGACY_SWITCHES and not dotted:
        return _Match(root, Kind.SPECULATION, False, False)
    if root in DEPENDENT_FLAGS and not dotted:
        return _Match(root, Kind.DEPENDENT, not has_inline_value, False)
    return None


def _looks_like_option(token: str) -> bool:
    return token.startswith("-") and not _NEGATIVE_NUMBER.match(token)


def _scan(tokens: Sequence[str], *, shell: bool) -> list[tuple[int, int, _Match]]:
    """(start, end) token ranges of every flag with its value, in order."""
    found: list[tuple[int, int, _Match]] = []
    i = 0
    while i < len(tokens):
        match = canonical_flag(tokens[i])
        if match is None:
            i += 1
            continue
        end = i + 1
        if match.takes_value and end < len(tokens):
            value = tokens[end]
            operator = shell and value in _OPERATORS
            if not operator and (match.dotted or not _looks_like_option(value)):
                end += 1
        found.append((i, end, match))
        i = end
    return found


# --- shell strings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    raw: str


def shell_words(script: str) -> list[_Word]:
    """Split a POSIX shell string into words with their spans; operators (``;``, ``&&``, newline) are words.

    Quotes and backslash escapes follow sh; a backslash-newline is a line continuation (whitespace).
    """
    words: list[_Word] = []
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        if script.startswith("\\\n", i) or ch in " \t\r":
            i += 2 if ch == "\\" else 1
            continue
        op = next((o for o in _OPERATORS if script.startswith(o, i)), None)
        if op is not None:
            words.append(_Word(i, i + len(op), op))
            i += len(op)
            continue
        start = i
        i = _word_end(script, i)
        words.append(_Word(start, i, script[start:i]))
    return words


def _word_end(script: str, i: int) -> int:
    n = len(script)
    while i < n:
        ch = script[i]
        if ch in " \t\r\n" or script.startswith("\\\n", i) or ch in ";&|":
            return i
        if ch == "\\":
            i += 2
        elif ch == "'":
            close = script.find("'", i + 1)
            i = n if close < 0 else close + 1
        elif ch == '"':
            i += 1
            while i < n and script[i] != '"':
                i += 2 if script[i] == "\\" else 1
            i += 1
        else:
            i += 1
    return min(i, n)


def _word_value(raw: str) -> str:
    if raw in _OPERATORS:
        return raw
    try:
        parts = shlex.split(raw, posix=True)
    except ValueError:  # unbalanced quote: keep the raw text, it still names the flag or not
        return raw
    return parts[0] if len(parts) == 1 else raw


def _shell_spans(script: str) -> list[tuple[int, int, _Match, tuple[str, ...]]]:
    """Character spans to cut from a script: each flag with its value and the whitespace that leads to it."""
    words = shell_words(script)
    values = [_word_value(w.raw) for w in words]
    spans: list[tuple[int, int, _Match, tuple[str, ...]]] = []
    cursor = 0
    for a, b, match in _scan(values, shell=True):
        if a > 0:
            start, end = max(cursor, words[a - 1].end), words[b - 1].end
        else:  # flag opens the script: cut the whitespace after it instead
            start, end = words[a].start, words[b].start if b < len(words) else len(script)
        spans.append((start, end, match, tuple(w.raw for w in words[a:b])))
        cursor = end
    return spans


def is_shell_script(command: Sequence[str] | None, args: Sequence[str] | None, field: str, index: int) -> bool:
    """Whether an item is the script of ``sh -c SCRIPT`` (in ``command``, ``args``, or spread over both)."""
    items = [*(command or ()), *(args or ())]
    position = index if field == "command" else len(command or ()) + index
    option = items[position - 1] if position > 0 else ""
    if not _SHELL_SCRIPT_OPTION.match(option) or canonical_flag(option) is not None:
        return False
    if items and _basename(items[0]) in SHELLS:
        return True
    # No command: args run under the image's entrypoint, which we cannot see; `-c` first is the shell idiom.
    return not command and field == "args" and index == 1


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# --- find / remove / restore -----------------------------------------------------------------------------


def find(command: Sequence[str] | None, args: Sequence[str] | None) -> tuple[Flag, ...]:
    found: list[Flag] = []
    for field, items in (("command", command), ("args", args)):
        found.extend(_find_in_field(command, args, field, list(items or ())))
    return tuple(found)


def speculation_configured(command: Sequence[str] | None, args: Sequence[str] | None) -> bool:
    return any(f.kind is Kind.SPECULATION for f in find(command, args))


def speculative_config_keys(command: Sequence[str] | None, args: Sequence[str] | None) -> frozenset[str]:
    """The keys the speculation flags set in vLLM's speculative config, spelled as vLLM reads them (``-`` as
    ``_``): the JSON object's keys, dotted keys, and the key of each shorthand flag. A value that is not a JSON
    object adds nothing (vLLM refuses it whatever its version); legacy flags set no key of today's config."""
    keys: set[str] = set()
    for flag in find(command, args):
        words = [_word_value(t) for t in flag.text] if flag.in_shell else list(flag.text)
        name, inline, inline_value = words[0].partition("=")
        if flag.flag in SHORTHAND_KEYS:
            keys.add(SHORTHAND_KEYS[flag.flag])
            continue
        if flag.flag not in DOTTED_ROOTS:
            continue
        _, dot, dotted = name.partition(".")
        if dot:
            keys.add(dotted.split(".", 1)[0].replace("-", "_"))
            continue
        value = inline_value if inline else (words[1] if len(words) > 1 else "")
        try:
            parsed = json.loads(value)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            keys.update(str(k).replace("-", "_") for k in parsed)
    return frozenset(keys)


def _find_in_field(
    command: Sequence[str] | None, args: Sequence[str] | None, field: str, items: list[str]
) -> list[Flag]:
    found = [Flag(field, a, m.flag, m.kind, tuple(items[a:b]), in_shell=False) for a, b, m in _scan(items, shell=False)]
    for index, item in enumerate(items):
        if is_shell_script(command, args, field, index):
            found.extend(
                Flag(field, index, m.flag, m.kind, words, in_shell=True) for *_, m, words in _shell_spans(item)
            )
    return sorted(found, key=lambda f: f.index)


def remove(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    *,
    secret_flags: Sequence[str] = DEFAULT_SECRET_FLAGS,
) -> Removal:
    """Drop every speculation flag (and its dependents) from both fields; record what went where (no secret)."""
    edits: list[dict[str, Any]] = []
    removed: list[Flag] = []
    new_fields: dict[str, list[str] | None] = {}
    for field, items in (("command", command), ("args", args)):
        if items is None:
            new_fields[field] = None
            continue
        kept, field_edits, field_removed = _remove_in_field(command, args, field, list(items))
        new_fields[field] = kept
        edits.extend(field_edits)
        removed.extend(field_removed)
    secrets = secret_flag_names(secret_flags)
    record = {
        "version": RECORD_VERSION,
        "edits": edits,
        # Only to check, before a restore, that the args are still those the removal left; credentials redacted.
        "after": {
            "command": redact(new_fields["command"], new_fields["command"], new_fields["args"], "command", secrets),
            "args": redact(new_fields["args"], new_fields["command"], new_fields["args"], "args", secrets),
        },
    }
    return Removal(new_fields["command"], new_fields["args"], tuple(removed), record)


def _remove_in_field(
    command: Sequence[str] | None, args: Sequence[str] | None, field: str, items: list[str]
) -> tuple[list[str], list[dict[str, Any]], list[Flag]]:
    edits: list[dict[str, Any]] = []
    removed: list[Flag] = []
    scripts: dict[int, str] = {}
    for index, item in enumerate(items):
        if not is_shell_script(command, args, field, index):
            continue
        spans = _shell_spans(item)
        if not spans:
            continue
        edits.append({"field": field, "index": index, "spans": [[s, item[s:e]] for s, e, _m, _w in spans]})
        removed.extend(Flag(field, index, m.flag, m.kind, w, in_shell=True) for _s, _e, m, w in spans)
        scripts[index] = _cut(item, [(s, e) for s, e, _m, _w in spans])
    cut: set[int] = set()
    for a, b, match in _scan(items, shell=False):
        edits.append({"field": field, "index": a, "items": items[a:b]})
        removed.append(Flag(field, a, match.flag, match.kind, tuple(items[a:b]), in_shell=False))
        cut.update(range(a, b))
    kept = [scripts.get(i, item) for i, item in enumerate(items) if i not in cut]
    return kept, edits, removed


def _cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return "".join(out)


def restore(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    record: Mapping[str, Any],
    *,
    strict: bool = True,
) -> Fields:
    """Put back what :func:`remove` took out. Strict: the fields must equal what the removal left (a redacted
    value in the record matches any value; version 1 records compare exactly)."""
    version = record.get("version")
    if version not in READABLE_VERSIONS:
        raise RestoreConflictError(f"unknown removal record version {version!r}")
    after = record.get("after", {})
    current = {"command": _listed(command), "args": _listed(args)}
    if strict:
        for field in ("command", "args"):
            live, recorded = current[field] or [], after.get(field) or []
            same = live == recorded if version == 1 else _matches_redacted(live, recorded)
            if not same:
                raise RestoreConflictError(f"{field} changed since speculation was removed")
    restored = {field: _restore_field(current[field], field, record["edits"]) for field in current}
    return restored["command"], restored["args"]


def _listed(items: Sequence[str] | None) -> list[str] | None:
    return None if items is None else list(items)


def _restore_field(items: list[str] | None, field: str, edits: Sequence[Mapping[str, Any]]) -> list[str] | None:
    mine = [e for e in edits if e["field"] == field]
    if not mine:
        return items
    out = list(items or [])
    for edit in sorted((e for e in mine if "items" in e), key=lambda e: int(e["index"])):
        index = int(edit["index"])
        if index > len(out):
            raise RestoreConflictError(f"{field}[{index}] is past the end of the list")
        out[index:index] = [str(x) for x in edit["items"]]
    for edit in (e for e in mine if "spans" in e):
        index = int(edit["index"])
        if index >= len(out):
            raise RestoreConflictError(f"{field}[{index}] (a shell script) is missing")
        out[index] = _uncut(out[index], edit["spans"])
    return out


def _uncut(text: str, spans: Sequence[Sequence[Any]]) -> str:
    for offset, piece in sorted(((int(s[0]), str(s[1])) for s in spans), key=lambda s: s[0]):
        if offset > len(text):
            raise RestoreConflictError("shell script is shorter than the recorded cut")
        text = text[:offset] + piece + text[offset:]
    return text


# --- secrets ---------------------------------------------------------------------------------------------


def secret_flag_names(flags: Sequence[str]) -> frozenset[str]:
    """The flag names as :func:`_secret_flag` compares them (underscores are dashes, as vLLM reads them)."""
    return frozenset(_normalised(f.strip()) for f in flags if f.strip().startswith("-"))


def _normalised(key: str) -> str:
    return key.replace("_", "-") if key.startswith("--") else key


def _secret_flag(token: str, secrets: frozenset[str]) -> tuple[bool, bool]:
    """(names a secret flag, carries its value inline). An abbreviation of one counts too: argparse accepts an
    unambiguous prefix, and redacting a little too much only loosens the check before a restore."""
    if not token.startswith("-") or _NEGATIVE_NUMBER.match(token):
        return False, False
    key, inline = token.split("=", 1)[0], "=" in token
    key = _normalised(key)
    if key in secrets:
        return True, inline
    prefix = key.startswith("--") and len(key) > 3 and any(s.startswith(key) for s in secrets if s.startswith("--"))
    return prefix, inline and prefix


def _redact_tokens(tokens: Sequence[str], secrets: frozenset[str]) -> list[tuple[int, bool]]:
    """Every token that holds a credential: (index, inline), inline for ``--flag=value``. After a secret flag,
    every value up to the next option is one (``--api-key`` takes several keys)."""
    out: list[tuple[int, bool]] = []
    taking = False
    for i, token in enumerate(tokens):
        secret, inline = _secret_flag(token, secrets)
        if secret:
            taking = not inline
            if inline:
                out.append((i, True))
            continue
        if _looks_like_option(token) or token in _OPERATORS:
            taking = False
        elif taking:
            out.append((i, False))
    return out


def _redacted(raw: str, inline: bool) -> str:
    """The text that replaces a credential: the flag's own text up to '=' is kept (quotes before it included)."""
    return raw[: raw.index("=") + 1] + REDACTED if inline and "=" in raw else REDACTED


def redact(
    items: Sequence[str] | None,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    field: str,
    secrets: frozenset[str],
) -> list[str] | None:
    """``items`` (the ``field`` of a container with these ``command`` and ``args``) with every credential value
    replaced by ``<redacted>``: list items, and words inside an ``sh -c`` script."""
    if items is None:
        return None
    out = list(items)
    for index, inline in _redact_tokens(out, secrets):
        out[index] = _redacted(out[index], inline)
    for index, item in enumerate(items):
        if is_shell_script(command, args, field, index):
            out[index] = _redact_script(item, secrets)
    return out


def _redact_script(script: str, secrets: frozenset[str]) -> str:
    words = shell_words(script)
    found = _redact_tokens([_word_value(w.raw) for w in words], secrets)
    out, last = [], 0
    for index, inline in found:
        word = words[index]
        out += [script[last : word.start], _redacted(word.raw, inline)]
        last = word.end
    out.append(script[last:])
    return "".join(out)


def upgraded_record(
    record: Mapping[str, Any], secret_flags: Sequence[str] = DEFAULT_SECRET_FLAGS
) -> dict[str, Any] | None:
    """A version 1 ``record`` without the credentials it holds, as the version 2 record a sidecar of today would
    have written for the same removal; None if there is nothing to rewrite.

    Version 1 records (older sidecars) kept the args left after the removal as they were, credentials included.
    Only ``after`` changes, redacted exactly as :func:`remove` redacts it: the edits (the speculation flags' own
    text and positions) stay as they are, and a restore takes everything around them from the live spec, so it
    rebuilds the same args byte for byte from either record. The check before a restore loosens only where a
    value was redacted: there any value now matches (a rotated key), as for a record written today.

    None for a version 1 record with no credential: the rewrite exists to take a secret off the Deployment,
    version 1 stays readable, and a write (with its Event) for a version number alone would tell nobody
    anything. None for a version 2 record (already redacted when written; redacting its text again is not
    exact: a quoted ``'--hf-token=<redacted>`` no longer splits into the words it came from), and for a record
    this code cannot read (unknown version, malformed), which :func:`restore` refuses anyway. So an upgraded
    record never upgrades again: the rewrite happens once.
    """
    if record.get("version") != 1 or not isinstance(record.get("edits"), list):
        return None
    after = record.get("after")
    if not isinstance(after, Mapping):
        return None
    command, args = after.get("command"), after.get("args")
    if not (_string_list_or_none(command) and _string_list_or_none(args)):
        return None
    secrets = secret_flag_names(secret_flags)
    redacted = {
        "command": redact(command, command, args, "command", secrets),
        "args": redact(args, command, args, "args", secrets),
    }
    if redacted == {"command": command, "args": args}:
        return None
    return {**record, "version": RECORD_VERSION, "after": {**after, **redacted}}


def _string_list_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _matches_redacted(live: Sequence[str], recorded: Sequence[Any]) -> bool:
    """Item by item, ``<redacted>`` in a recorded item standing for any text (the live value is what counts)."""
    if len(live) != len(recorded):
        return False
    for have, raw in zip(live, recorded, strict=True):
        want = str(raw)
        if REDACTED not in want:
            if have != want:
                return False
        elif re.fullmatch(".*?".join(re.escape(part) for part in want.split(REDACTED)), have, re.DOTALL) is None:
            return False
    return True


# --- for sidecar.core.spec_tokens, which rewrites a value inside these flags instead of removing them -----

word_value = _word_value
shell_spans = _shell_spans
matches_redacted = _matches_redacted
