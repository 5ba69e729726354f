"""The decision state the sidecar keeps on the Deployment, as annotations under ``spec-sidecar.io/``.

It lives on the object it controls so it survives the sidecar's own restart (every toggle rolls the pod) and is
written in the same patch as the args, so a kill -9 can never leave args and state disagreeing. Two writes change
the record alone (no args, so no rollout): a latch, and a passed timed trial (reason ``trial_passed``, trial
counters reset), which a restarted sidecar must know so as not to judge the trial again.
Reading is forgiving: a malformed annotation (hand-edited) reads as absent, never as a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

PREFIX = "spec-sidecar.io/"
STATE = PREFIX + "state"
REASON = PREFIX + "reason"
CHANGED_AT = PREFIX + "changed-at"
CHANGED_BY = PREFIX + "changed-by"
REMOVED_ARGS = PREFIX + "removed-args"
HISTORY = PREFIX + "history"
PIN = PREFIX + "pin"
LATCHED = PREFIX + "latched"
TRIAL = PREFIX + "trial"
# Recent TPOT windows with speculation on and off (sidecar.core.measured_speedup.encode): the pod, and the
# sidecar with it, restarts at every toggle, so the measured speedup would otherwise never see both states.
SPEED = PREFIX + "speed"
# The record of a lowered num_speculative_tokens (sidecar.core.spec_tokens), to put the original back byte for byte.
REDUCED_K = PREFIX + "reduced-k"
# The record of a schedule of K per batch size written into the speculative config (sidecar.core.schedule_config).
K_SCHEDULE = PREFIX + "k-schedule"
KEYS = (STATE, REASON, CHANGED_AT, CHANGED_BY, REMOVED_ARGS, HISTORY, PIN, LATCHED, TRIAL, SPEED, REDUCED_K, K_SCHEDULE)
# What a history entry may say: the two toggles, a lowered number of speculative tokens and a schedule of K per
# batch size (speculation stays on with both).
ACTIONS = ("disable", "enable", "reduce-k", "schedule-k")

# Enough for any flap budget we would configure; keeps the annotation small (the limit is 256 KiB in total).
MAX_HISTORY = 32


class By(StrEnum):
    SIDECAR = "sidecar"
    MANUAL = "manual"


@dataclass(frozen=True)
class Toggle:
    at: float
    action: str  # "disable" | "enable" | "reduce-k" | "schedule-k"
    by: By
    reason: str


@dataclass(frozen=True)
class ControlRecord:
    state: str | None = None  # "on" | "off": what the last toggle set
    reason: str | None = None
    changed_at: float | None = None
    changed_by: By | None = None
    removed: Mapping[str, Any] | None = None  # specargs removal record, to restore byte for byte
    history: tuple[Toggle, ...] = ()
    pin: str | None = None  # "on" | "off", set by a human; always wins
    latched: str | None = None  # why automatic toggling stopped; cleared by a human
    trial_attempts: int = 0
    next_trial_at: float | None = None
    speed: str | None = None  # TPOT windows for the measured speedup, as written with the last toggle (opaque here)
    reduced: Mapping[str, Any] | None = None  # spec_tokens rewrite record: the original K, to restore byte for byte
    scheduled: Mapping[str, Any] | None = None  # schedule_config write record: what to take out, byte for byte

    def toggled(self, now: float, action: str, by: By, reason: str, removed: Mapping[str, Any] | None) -> ControlRecord:
        """The record after a toggle: state, reason, time, author, removed args, one more history entry."""
        now = stored_time(now)
        history = (*self.history, Toggle(now, action, by, reason))[-MAX_HISTORY:]
        return replace(
            self,
            state="off" if action == "disable" else "on",
            reason=reason,
            changed_at=now,
            changed_by=by,
            removed=removed,
            history=history,
        )

    def toggles_since(self, since: float, by: By | None = None) -> int:
        return sum(1 for t in self.history if t.at >= since and (by is None or t.by is by))


def stored_time(seconds: float) -> float:
    """``seconds`` as it reads back from an annotation (millisecond precision), so records compare equal."""
    return math.floor(seconds * 1000) / 1000


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def to_annotations(record: ControlRecord) -> dict[str, str | None]:
    """Every key we own, with None meaning 'remove this annotation'."""
    trial = (
        json.dumps({"attempts": record.trial_attempts, "next_at": _opt_ts(record.next_trial_at)}, separators=(",", ":"))
        if record.trial_attempts or record.next_trial_at is not None
        else None
    )
    history = [{"at": timestamp(t.at), "action": t.action, "by": str(t.by), "reason": t.reason} for t in record.history]
    return {
        STATE: record.state,
        REASON: record.reason,
        CHANGED_AT: _opt_ts(record.changed_at),
        CHANGED_BY: str(record.changed_by) if record.changed_by else None,
        REMOVED_ARGS: json.dumps(record.removed, separators=(",", ":")) if record.removed is not None else None,
        HISTORY: json.dumps(history, separators=(",", ":")) if history else None,
        PIN: record.pin,
        LATCHED: record.latched,
        TRIAL: trial,
        SPEED: record.speed,
        REDUCED_K: json.dumps(record.reduced, separators=(",", ":")) if record.reduced is not None else None,
        K_SCHEDULE: json.dumps(record.scheduled, separators=(",", ":")) if record.scheduled is not None else None,
    }


def _opt_ts(seconds: float | None) -> str | None:
    return None if seconds is None else timestamp(seconds)


def from_annotations(annotations: Mapping[str, str] | None) -> ControlRecord:
    a = dict(annotations or {})
    trial = _json(a.get(TRIAL))
    trial = trial if isinstance(trial, dict) else {}
    removed = _json(a.get(REMOVED_ARGS))
    reduced = _json(a.get(REDUCED_K))
    scheduled = _json(a.get(K_SCHEDULE))
    return ControlRecord(
        state=_choice(a.get(STATE), ("on", "off")),
        reason=a.get(REASON) or None,
        changed_at=parse_timestamp(a[CHANGED_AT]) if CHANGED_AT in a else None,
        changed_by=_by(a.get(CHANGED_BY)),
        removed=removed if isinstance(removed, dict) else None,
        history=_history(_json(a.get(HISTORY))),
        pin=_choice(a.get(PIN), ("on", "off")),
        latched=a.get(LATCHED) or None,
        trial_attempts=_int(trial.get("attempts")),
        next_trial_at=parse_timestamp(str(trial["next_at"])) if trial.get("next_at") else None,
        speed=a.get(SPEED) or None,
        reduced=reduced if isinstance(reduced, dict) else None,
        scheduled=scheduled if isinstance(scheduled, dict) else None,
    )


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _choice(value: str | None, allowed: tuple[str, ...]) -> str | None:
    value = (value or "").strip().lower()
    return value if value in allowed else None


def _by(value: str | None) -> By | None:
    try:
        return By(value) if value else None
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _history(raw: Any) -> tuple[Toggle, ...]:
    if not isinstance(raw, list):
        return ()
    out: list[Toggle] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        at = parse_timestamp(str(item.get("at", "")))
        by = _by(item.get("by"))
        if at is None or by is None or item.get("action") not in ACTIONS:
            continue
        out.append(Toggle(at, str(item["action"]), by, str(item.get("reason", ""))))
    return tuple(out[-MAX_HISTORY:])
