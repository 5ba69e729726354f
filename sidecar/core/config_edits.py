"""Undo the recorded edits of a speculative-config write (``num_speculative_tokens``, a load schedule of K).

Both writes keep the same kind of record: each changed list item or script piece verbatim, before and after
(``old``/``new``), or the text spans changed inside an ``sh -c`` script (``spans``: start, old, new), or a list
item they inserted (``insert``), plus the args the write left with credential values redacted (``after``). Undoing
walks the edits in reverse order, since later pieces of one script were written on earlier ones, and refuses
whenever a piece no longer reads as the write left it: restoring over someone else's edit would lose it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.core import specargs
from sidecar.core.specargs import RestoreConflictError


def undo_edits(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    record: Mapping[str, Any],
    *,
    strict: bool,
    what: str,
) -> specargs.Fields:
    """The fields with the record's edits taken back. Strict: the fields must first equal what the write left (a
    redacted value matches any value). ``what`` names the write in errors ("the schedule of K")."""
    current = {"command": _listed(command), "args": _listed(args)}
    if strict:
        after = record.get("after", {})
        for field in ("command", "args"):
            if not specargs.matches_redacted(current[field] or [], after.get(field) or []):
                raise RestoreConflictError(f"{field} changed since {what} was written")
    for edit in reversed(record.get("edits", [])):
        items = current.get(str(edit.get("field")))
        index = int(edit["index"])
        if items is None or index >= len(items):
            raise RestoreConflictError(f"{edit.get('field')}[{index}] is missing")
        if "spans" in edit:
            items[index] = _undo_spans(items[index], edit["spans"], what)
        elif "insert" in edit:
            if items[index] != edit["insert"]:
                raise RestoreConflictError(f"{edit['field']}[{index}] no longer reads {edit['insert']!r}")
            del items[index]
        elif items[index] != edit["new"]:
            raise RestoreConflictError(f"{edit['field']}[{index}] no longer reads {edit['new']!r}")
        else:
            items[index] = str(edit["old"])
    return current["command"], current["args"]


def _undo_spans(script: str, spans: Sequence[Sequence[Any]], what: str) -> str:
    for start, old, new in sorted(((int(s[0]), str(s[1]), str(s[2])) for s in spans), reverse=True):
        if script[start : start + len(new)] != new:
            raise RestoreConflictError(f"the shell script no longer holds {what} where it was written")
        script = script[:start] + old + script[start + len(new) :]
    return script


def _listed(items: Sequence[str] | None) -> list[str] | None:
    return None if items is None else list(items)
