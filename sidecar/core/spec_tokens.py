"""Rewrite ``num_speculative_tokens`` inside the speculative config, and put the original back byte for byte.

Every spelling :mod:`sidecar.core.specargs` finds that sets the number of speculative tokens is rewritten:
the JSON of ``--speculative-config`` / ``-sc`` (as ``--flag JSON`` or ``--flag=JSON``), the dotted key
``--speculative-config.num_speculative_tokens N``, the shorthand ``--spec-tokens N`` and the legacy
``--num-speculative-tokens N``, as list items or inside an ``sh -c`` string. Only the digits of the number change:
the JSON's spacing and key order, quotes and everything around stay as written.

The :class:`Rewrite` record is plain JSON, like a removal record (:mod:`sidecar.core.specargs`): each changed list
item or script piece verbatim, before and after, and the args left by the rewrite with the values of credential
flags redacted, only to check before a restore that nobody edited them since. It holds no secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.core import config_edits, specargs
from sidecar.core.specargs import RestoreConflictError

RECORD_VERSION = 1
KEY = "num_speculative_tokens"
# The flags whose value is the number itself (the shorthand of vLLM 0.32+, and the legacy flag before 0.8.3).
NUMBER_FLAGS = frozenset({"--spec-tokens", "--num-speculative-tokens"})
# The key inside a JSON value, as written (vLLM reads '-' as '_'), an escaped quote allowed (inside "..." in sh).
_JSON_NUMBER = re.compile(r"""(num[_-]speculative[_-]tokens\\?["']?\s*:\s*)(\d+)""")
_DIGITS = re.compile(r"\d+")


class NotRewritableError(ValueError):
    """The args set no number of speculative tokens the sidecar can rewrite (or set it in a way it cannot read)."""


@dataclass(frozen=True)
class Rewrite:
    command: list[str] | None
    args: list[str] | None
    old_k: int
    new_k: int
    changed: tuple[str, ...]  # each rewritten flag, as it reads after the rewrite
    record: dict[str, Any]  # JSON-serialisable; feed it to restore()


def current_k(command: Sequence[str] | None, args: Sequence[str] | None) -> int | None:
    """The number of speculative tokens the args set (the last setting wins, as in vLLM), or None."""
    found = [k for _flag, k in _settings(command, args)]
    return found[-1] if found else None


def rewrite(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    k: int,
    *,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> Rewrite:
    """Every setting of the number of speculative tokens set to ``k``; raises NotRewritableError if none."""
    if k < 1:
        raise NotRewritableError(f"num_speculative_tokens must be at least 1, not {k}")
    settings = _settings(command, args)
    if not settings:
        raise NotRewritableError(
            "no num_speculative_tokens in the speculative config (the engine takes it from the draft's own "
            "config): there is no number to lower. Set it in --speculative-config to let the sidecar change it"
        )
    old = settings[-1][1]
    fields: dict[str, list[str] | None] = {"command": _listed(command), "args": _listed(args)}
    edits: list[dict[str, Any]] = []
    changed: list[str] = []
    for flag, _k in settings:
        items = fields[flag.field]
        assert items is not None
        if flag.in_shell:
            script = items[flag.index]
            new_script, spans = _rewrite_script(script, flag, k)
            items[flag.index] = new_script
            edits.append({"field": flag.field, "index": flag.index, "spans": spans})
            changed.append(" ".join(_rewrite_words(flag.text, flag.flag, k)))
        else:
            new_text = _rewrite_words(flag.text, flag.flag, k)
            for offset, (before, after) in enumerate(zip(flag.text, new_text, strict=True)):
                if before != after:
                    items[flag.index + offset] = after
                    edits.append({"field": flag.field, "index": flag.index + offset, "old": before, "new": after})
            changed.append(" ".join(new_text))
    new_command, new_args = fields["command"], fields["args"]
    if [k for _f, k in _settings(new_command, new_args)] != [k] * len(settings):
        raise NotRewritableError("the rewritten speculative config does not read back as asked")
    secrets = specargs.secret_flag_names(secret_flags)
    record = {
        "version": RECORD_VERSION,
        "key": KEY,
        "from": old,
        "to": k,
        "edits": edits,
        "after": {
            "command": specargs.redact(new_command, new_command, new_args, "command", secrets),
            "args": specargs.redact(new_args, new_command, new_args, "args", secrets),
        },
    }
    return Rewrite(new_command, new_args, old, k, tuple(changed), record)


def restore(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    record: Mapping[str, Any],
    *,
    strict: bool = True,
) -> specargs.Fields:
    """Put back what :func:`rewrite` changed. Strict: the fields must equal what the rewrite left (a redacted
    value matches any value). Forced or not, each rewritten piece must still read as the rewrite left it."""
    if record.get("version") != RECORD_VERSION or record.get("key") != KEY:
        raise RestoreConflictError(f"unknown rewrite record {record.get('key')!r} version {record.get('version')!r}")
    return config_edits.undo_edits(command, args, record, strict=strict, what="num_speculative_tokens")


# --- internals -------------------------------------------------------------------------------------------


def _listed(items: Sequence[str] | None) -> list[str] | None:
    return None if items is None else list(items)


def _settings(command: Sequence[str] | None, args: Sequence[str] | None) -> list[tuple[specargs.Flag, int]]:
    """Each flag that sets the number of speculative tokens, with the number it sets."""
    out: list[tuple[specargs.Flag, int]] = []
    for flag in specargs.find(command, args):
        words = [specargs.word_value(t) for t in flag.text] if flag.in_shell else list(flag.text)
        k = _number_in(flag.flag, words)
        if k is not None:
            out.append((flag, k))
    return out


def _number_in(flag: str, words: Sequence[str]) -> int | None:
    name, inline, inline_value = words[0].partition("=")
    value = inline_value if inline else (words[1] if len(words) > 1 else "")
    _root, dot, dotted = name.partition(".")
    if flag in NUMBER_FLAGS or (dot and dotted.replace("-", "_") == KEY):
        return _int(value)
    if dot or flag not in specargs.DOTTED_ROOTS:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    keys = [key for key in parsed if str(key).replace("-", "_") == KEY]
    return _int(parsed[keys[-1]]) if keys else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _rewrite_words(words: Sequence[str], flag: str, k: int) -> tuple[str, ...]:
    """The flag's words (list items or raw shell words) with the number set to ``k``: only its digits change."""
    out = list(words)
    name = words[0].split("=", 1)[0]
    number = flag in NUMBER_FLAGS or "." in name
    pattern = _DIGITS if number else _JSON_NUMBER
    if "=" in words[0] and len(words) == 1:
        head, value = words[0].split("=", 1)
        out[0] = f"{head}={_sub(pattern, value, k)}"
    elif len(words) > 1:
        out[1] = _sub(pattern, words[1], k)
    return tuple(out)


def _sub(pattern: re.Pattern[str], text: str, k: int) -> str:
    if pattern is _DIGITS:
        return pattern.sub(str(k), text, count=1)
    return pattern.sub(lambda m: m.group(1) + str(k), text)


def _rewrite_script(script: str, flag: specargs.Flag, k: int) -> tuple[str, list[list[Any]]]:
    """The script with this flag's number set to ``k``, and [start, old, new] per changed piece (start in the
    rewritten script), found by the same word spans the removal cuts."""
    for start, end, _match, words in specargs.shell_spans(script):
        if tuple(words) != flag.text:
            continue
        piece = script[start:end]
        new_words = _rewrite_words(words, flag.flag, k)
        new_piece = piece
        cursor = 0
        for before, after in zip(words, new_words, strict=True):
            at = new_piece.index(before, cursor)
            new_piece = new_piece[:at] + after + new_piece[at + len(before) :]
            cursor = at + len(after)
        if new_piece == piece:
            return script, []
        return script[:start] + new_piece + script[end:], [[start, piece, new_piece]]
    raise NotRewritableError("the flag was not found again in its shell script")
