"""The actuator contract: read a target's speculation state, turn it off, turn it back on.

Two adapters implement it: :mod:`sidecar.adapters.kube.actuator` (a Deployment, through the API server) and
:mod:`sidecar.adapters.manifest` (a local YAML file). Both call :func:`plan` here, so what a toggle writes
(args without the speculation flags, the removal record, state/reason/time/history annotations) is decided
once, on plain data; the adapters only read, write atomically and report.

Every operation is idempotent (asking for the state the target is already in is ``unchanged``) and guarded
(a rollout in progress, a pin, a latch, a stale decision: refused with an outcome that says why).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from sidecar.core import rollout_watch, schedule_config, spec_tokens, specargs, vllm_versions
from sidecar.core.annotations import By, ControlRecord
from sidecar.core.policy import Action, Decision
from sidecar.core.rollout_watch import RolloutWatch
from sidecar.core.specargs import Flag

Clock = Callable[[], float]


class TargetError(RuntimeError):
    """The target cannot be read or written (missing, unreachable, not a manifest...). ``reason`` is a metric
    label; ``detail`` says what, for a person. Every actuator raises its own errors as subclasses of this one
    (``KubeError``, ``ManifestError``), so callers catch this and nothing broader."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Outcome(StrEnum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"  # already in the asked-for state
    CONFLICT = "conflict"  # the target changed under us (409/422): re-read and decide again
    NOT_LEADER = "not_leader"
    ROLLOUT_PENDING = "rollout_pending"
    PINNED = "pinned"
    LATCHED = "latched"
    NOT_RESTORABLE = "not_restorable"  # no removal record, the args changed since, or the engine would refuse them
    NOT_REMOVABLE = "not_removable"  # the engine speculates, but no flag in the args turns it on
    ENGINE_WOULD_REFUSE = "engine_would_refuse"  # the new speculative config has keys the engine's version rejects
    NOT_REWRITABLE = "not_rewritable"  # reduce-k: no num_speculative_tokens in the args, or K lowered already
    # schedule-k: the engine would ignore the schedule (data parallel) or not know it (its vLLM version), or the
    # args have no speculative config to hold it, or one is in place already
    NOT_SCHEDULABLE = "not_schedulable"
    DRY_RUN = "dry_run"
    ERROR = "error"  # the write failed and was not done (reason in detail; counted by the adapter)


@dataclass(frozen=True)
class TargetView:
    target: str  # "deployment/NS/NAME container=C" or "file:PATH container=C"
    command: list[str] | None
    args: list[str] | None
    record: ControlRecord
    rollout_complete: bool
    flags: tuple[Flag, ...] = ()
    image: str | None = None  # the engine container's image: its tag tells which vLLM will read restored args
    watch: RolloutWatch | None = None  # a config write whose rollout is being watched (sidecar.core.rollout_watch)

    @property
    def speculation(self) -> bool:
        return any(f.kind is specargs.Kind.SPECULATION for f in self.flags)


@dataclass(frozen=True)
class ActResult:
    outcome: Outcome
    action: str  # disable | enable | latch | pin
    detail: str
    view: TargetView | None = None  # the target as read last (after the write when it happened)
    flags: tuple[str, ...] = field(default=())  # flags removed or restored

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED


class Actuator(Protocol):
    """A target whose speculation can be switched. Sync: the runtime calls it from a worker thread."""

    target: str  # how logs and Events name it: "namespace/deployment container=..." or "file:... container=..."
    errors: Counter[str]  # failed reads and writes by reason, exported as specdecode_actuator_errors_total
    secret_flags: tuple[str, ...]  # flags whose values no record, Event or log line may hold

    def read(self) -> TargetView: ...

    def disable(self, reason: str, decision: Decision | None = None) -> ActResult:
        """Remove speculation (and its dependents). ``decision`` None means a human asked (CLI)."""
        ...

    def enable(self, reason: str, decision: Decision | None = None, *, force: bool = False) -> ActResult:
        """Restore exactly what the last disable removed; ``force``: even into args edited since."""
        ...

    def reduce_k(self, k: int | None, reason: str, decision: Decision | None = None) -> ActResult:
        """Lower num_speculative_tokens to ``k`` (the decision's when given); ``enable`` restores the original."""
        ...

    def schedule_k(
        self, schedule: Sequence[Sequence[int]] | None, reason: str, decision: Decision | None = None
    ) -> ActResult:
        """Write num_speculative_tokens_per_batch_size (the decision's when given); ``enable`` takes it out."""
        ...

    def write_record(self, record: ControlRecord, action: str, decision: Decision | None = None) -> ActResult:
        """Write the annotations only (latch, a passed trial, pin, clearing a latch); the args stay as they are."""
        ...

    def redact_record(self) -> ActResult:
        """Rewrite a removal record that holds credentials without them (:func:`plan_redaction`); args untouched."""
        ...

    def revert_rollout(self, timeout: float) -> ActResult:
        """The watched write's rollout was not ready within ``timeout`` seconds: put back the args and record that
        ran before it, byte for byte, and latch (sidecar.core.rollout_watch). Unchanged where nothing rolls out."""
        ...

    def settle_rollout(self) -> ActResult:
        """The watched write rolled out (or was superseded): drop the watch. Unchanged where nothing rolls out."""
        ...


class Leadership(Protocol):
    """A Lease only whose holder writes to the target (:class:`sidecar.adapters.kube.lease.LeaseElector`)."""

    @property
    def is_leader(self) -> bool: ...
    @property
    def holder(self) -> str | None: ...
    def acquire_or_renew(self) -> bool:
        """Take the Lease, or keep it; True if this sidecar holds it now."""
        ...

    def release(self) -> None:
        """Give the Lease up at once (on shutdown), so a successor need not wait for it to expire."""
        ...


@dataclass(frozen=True)
class Plan:
    command: list[str] | None
    args: list[str] | None
    record: ControlRecord
    flags: tuple[str, ...]


def describe(flags: Sequence[Flag]) -> tuple[str, ...]:
    return tuple(" ".join(f.text) for f in flags)


def plan(
    view: TargetView,
    action: Action,
    reason: str,
    decision: Decision | None,
    now: float,
    *,
    force: bool = False,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> Plan | ActResult:
    """What to write for ``action`` on ``view``, or why nothing should be written. The values of
    ``secret_flags`` never reach the record (see :mod:`sidecar.core.specargs`)."""
    undo = view.record.reduced is not None or view.record.scheduled is not None
    if action is Action.ENABLE and view.speculation and undo and decision is None:
        return _plan_restore_k(view, reason, now, force=force)
    refused = _refusal(view, action, decision)
    if refused is not None:
        return refused
    record = _next_record(view.record, action, reason, decision, now)
    if action is Action.DISABLE:
        removal = specargs.remove(view.command, view.args, secret_flags=secret_flags)
        record = replace(record, removed=removal.record)
        return Plan(removal.command, removal.args, record, describe(removal.removed))
    if view.record.removed is None:
        return ActResult(Outcome.NOT_RESTORABLE, str(action), "no record of removed flags on the target", view)
    try:
        command, args = specargs.restore(view.command, view.args, view.record.removed, strict=not force)
    except specargs.RestoreConflictError as exc:
        return ActResult(Outcome.NOT_RESTORABLE, str(action), f"{exc}; restore by hand or force", view)
    refused = _engine_would_refuse(view, command, args, str(action))
    if refused is not None:
        return refused
    restored = specargs.find(command, args)
    if view.record.scheduled is not None and decision is None:  # a human: back to the config before the schedule
        try:
            command, args = schedule_config.restore(command, args, view.record.scheduled, strict=not force)
            record = replace(record, scheduled=None)
        except specargs.RestoreConflictError:
            pass  # speculation comes back with the schedule; the record keeps it for a later enable
    if view.record.reduced is not None and record.scheduled is None and decision is None:
        # a human: back to the K before the sidecar lowered it (after the schedule, written on the lowered K)
        try:
            command, args = spec_tokens.restore(command, args, view.record.reduced, strict=not force)
            record = replace(record, reduced=None)
        except specargs.RestoreConflictError:
            pass  # speculation comes back at the lowered K; the record keeps the original for a later enable
    return Plan(command, args, replace(record, removed=None), describe(restored))


# --- reduce-k: a smaller num_speculative_tokens, with the same guards and record as a toggle ------------------


def plan_reduce_k(
    view: TargetView,
    k: int | None,
    reason: str,
    decision: Decision | None,
    now: float,
    *,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> Plan | ActResult:
    """What to write to lower num_speculative_tokens to ``k`` (the decision's, when there is one), or why not.

    Guarded as a disable is (the decision's record, a pin, a latch, a rollout in progress). The rewrite record
    goes to ``spec-sidecar.io/reduced-k``; ``enable`` by a human puts the original back byte for byte.
    """
    name = str(Action.REDUCE_K)
    k = decision.k if decision is not None else k
    if k is None:
        return ActResult(Outcome.ERROR, name, "no number of speculative tokens to write", view)
    if not view.speculation:
        return ActResult(Outcome.UNCHANGED, name, "speculation is off: there is no K to lower", view)
    if decision is not None:
        refused = check_decision(view, Action.REDUCE_K, decision)
        if refused is not None:
            return refused
    elif view.record.pin == "on":
        return ActResult(Outcome.PINNED, name, "pinned on: remove the pin first", view)
    if view.record.reduced is not None:
        detail = "K was lowered already: restore it with enable before lowering it again"
        return ActResult(Outcome.NOT_REWRITABLE, name, detail, view)
    if view.record.scheduled is not None:
        detail = "a schedule of K per batch size is in place: take it out with enable before lowering K"
        return ActResult(Outcome.NOT_REWRITABLE, name, detail, view)
    current = spec_tokens.current_k(view.command, view.args)
    if current is not None and current <= k:
        return ActResult(Outcome.UNCHANGED, name, f"num_speculative_tokens is {current}, not above {k}", view)
    try:
        done = spec_tokens.rewrite(view.command, view.args, k, secret_flags=secret_flags)
    except spec_tokens.NotRewritableError as exc:
        return ActResult(Outcome.NOT_REWRITABLE, name, str(exc), view)
    if decision is not None:
        record = decision.state.record
    else:
        record = view.record.toggled(now, name, By.MANUAL, reason, view.record.removed)
        record = replace(record, latched=None, trial_attempts=0, next_trial_at=None)
    return Plan(done.command, done.args, replace(record, reduced=done.record), done.changed)


# --- schedule-k: K per batch size in the speculative config, with the same guards and record as a toggle -------

# The first vLLM release with num_speculative_tokens_per_batch_size (docs/engines.md, "K per batch size").
SCHEDULE_SINCE: vllm_versions.Version = (0, 32, 0)


def schedule_refusal(view: TargetView) -> str | None:
    """Why the engine of ``view`` would ignore or refuse a schedule of K, in words with what to do; None if not."""
    dp = schedule_config.data_parallel_size(view.command, view.args)
    if dp is not None and dp > 1:
        return (
            f"the engine runs with --data-parallel-size {dp}: vLLM ignores num_speculative_tokens_per_batch_size "
            "with data parallelism (it logs a warning and keeps the fixed K), so a schedule would change nothing. "
            "Use --reduce-k or the disable instead, or run one engine per replica without data parallelism"
        )
    version = vllm_versions.image_version(view.image)
    if version is not None and version < SCHEDULE_SINCE:
        return (
            f"the engine's image ({view.image}) is vLLM {vllm_versions.version_text(version)}, which has no "
            f"num_speculative_tokens_per_batch_size (it came with {vllm_versions.version_text(SCHEDULE_SINCE)}) and "
            "would not start with it. Upgrade the engine to use a schedule, or use --reduce-k or the disable"
        )
    return None


def plan_schedule_k(
    view: TargetView,
    schedule: Sequence[Sequence[int]] | None,
    reason: str,
    decision: Decision | None,
    now: float,
    *,
    secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS,
) -> Plan | ActResult:
    """What to write to set num_speculative_tokens_per_batch_size to ``schedule`` (the decision's, when there is
    one), or why not.

    Guarded as a disable is (the decision's record, a pin, a latch, a rollout in progress), and refused where the
    engine would ignore the schedule (data parallel > 1) or does not know the key (a vLLM before 0.32; a checked
    version rejecting it is caught by :func:`guard_config` as for any write). The write record goes to
    ``spec-sidecar.io/k-schedule``; ``enable`` by a human takes the schedule out, byte for byte.
    """
    name = str(Action.SCHEDULE_K)
    ranges = decision.schedule if decision is not None else schedule
    if not ranges:
        return ActResult(Outcome.ERROR, name, "no schedule of K to write", view)
    value = [[int(x) for x in r] for r in ranges]
    if not view.speculation:
        return ActResult(Outcome.UNCHANGED, name, "speculation is off: there is no K to schedule", view)
    if decision is not None:
        refused = check_decision(view, Action.SCHEDULE_K, decision)
        if refused is not None:
            return refused
    elif view.record.pin == "on":
        return ActResult(Outcome.PINNED, name, "pinned on: remove the pin first", view)
    if view.record.scheduled is not None:
        detail = "a schedule of K was written already: take it out with enable before writing another"
        return ActResult(Outcome.NOT_SCHEDULABLE, name, detail, view)
    ignored = schedule_refusal(view)
    if ignored is not None:
        return ActResult(Outcome.NOT_SCHEDULABLE, name, ignored, view)
    try:
        done = schedule_config.write(view.command, view.args, value, secret_flags=secret_flags)
    except schedule_config.NotWritableError as exc:
        return ActResult(Outcome.NOT_SCHEDULABLE, name, str(exc), view)
    if decision is not None:
        record = decision.state.record
    else:
        record = view.record.toggled(now, name, By.MANUAL, reason, view.record.removed)
        record = replace(record, latched=None, trial_attempts=0, next_trial_at=None)
    return Plan(done.command, done.args, replace(record, scheduled=done.record), done.changed)


def _plan_restore_k(view: TargetView, reason: str, now: float, *, force: bool) -> Plan | ActResult:
    """``enable`` by a human while speculation runs with a schedule or a lowered K: the original config back."""
    name = str(Action.ENABLE)
    pin = view.record.pin
    if pin == "off":
        return ActResult(Outcome.PINNED, name, "pinned off: remove the pin first", view)
    command, args = view.command, view.args
    try:
        # The schedule was written last (reduce-k is refused once a schedule is in place): it comes out first.
        if view.record.scheduled is not None:
            command, args = schedule_config.restore(command, args, view.record.scheduled, strict=not force)
        if view.record.reduced is not None:
            command, args = spec_tokens.restore(command, args, view.record.reduced, strict=not force)
    except specargs.RestoreConflictError as exc:
        return ActResult(Outcome.NOT_RESTORABLE, name, f"{exc}; restore by hand or force", view)
    record = _next_record(view.record, Action.ENABLE, reason, None, now)
    changed = tuple(
        " ".join(f.text) for f in specargs.find(command, args) if f not in set(specargs.find(view.command, view.args))
    )
    return Plan(command, args, replace(record, reduced=None, scheduled=None), changed)


def _engine_would_refuse(
    view: TargetView, command: list[str] | None, args: list[str] | None, action: str
) -> ActResult | None:
    """Restored args the engine's version would not start with are not written, forced or not: a crash-looping
    engine is worse than speculation staying off. The image may have been upgraded since the removal."""
    version = vllm_versions.image_version(view.image)
    rejected = vllm_versions.rejected_keys(specargs.speculative_config_keys(command, args), version)
    if version is None or not rejected:
        return None
    keys = ", ".join(rejected)
    detail = (
        f"the speculative config to put back sets {keys}, which vLLM {vllm_versions.version_text(version)} "
        f"({view.image}) rejects: it would not start. Turn speculation on by hand with a config without "
        f"{'that key' if len(rejected) == 1 else 'those keys'} (the removed flags are in the "
        "spec-sidecar.io/removed-args annotation)"
    )
    return ActResult(Outcome.NOT_RESTORABLE, action, detail, view)


def guard_config(view: TargetView, planned: Plan, action: str) -> ActResult | None:
    """Every write that changes the args passes here before it is sent (both actuators): a speculative config with
    keys the engine's vLLM version rejects is refused, whatever asked for it (sidecar.core.rollout_watch)."""
    refused = rollout_watch.config_refusal(view.image, (view.command, view.args), (planned.command, planned.args))
    if refused is None:
        return None
    return ActResult(Outcome.ENGINE_WOULD_REFUSE, action, refused, view)


# Automatic decisions that write the control record alone (the pod template is untouched: no rollout).
RECORD_ONLY = frozenset({Action.LATCH, Action.RECORD})


def plan_record(view: TargetView, record: ControlRecord, action: str, decision: Decision | None) -> Plan | ActResult:
    """What to write for an annotations-only change on ``view``, or why nothing should be written.

    An automatic one goes ahead only on the record it was decided on (a rollout in progress does not stop it:
    it changes no args). A passed trial is recorded only while speculation is still on, as it was judged.
    """
    if decision is not None:
        if decision.action not in RECORD_ONLY:
            return ActResult(Outcome.ERROR, action, f"decision says {decision.action}, not an annotations-only write")
        refused = check_decision(view, decision.action, decision)
        if refused is not None and refused.outcome is not Outcome.ROLLOUT_PENDING:
            return refused
        if decision.action is Action.RECORD and not view.speculation:
            return ActResult(Outcome.CONFLICT, action, "speculation is no longer on the target", view)
    if view.record == record:
        return ActResult(Outcome.UNCHANGED, action, "annotations already say so", view)
    return Plan(view.command, view.args, record, ())


# The action and reason of the annotations-only write that takes credentials out of a removal record.
REDACT = "redact"
REDACT_REASON = "credentials_in_removal_record"


def needs_redaction(view: TargetView, secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS) -> bool:
    """Whether the removal record on ``view`` holds a value of one of ``secret_flags`` (an older sidecar's)."""
    removed = view.record.removed
    return removed is not None and specargs.upgraded_record(removed, secret_flags) is not None


def plan_redaction(view: TargetView, secret_flags: Sequence[str] = specargs.DEFAULT_SECRET_FLAGS) -> Plan | ActResult:
    """The annotations-only write that replaces the removal record on ``view`` by its upgraded, credential-free
    equivalent (:func:`sidecar.core.specargs.upgraded_record`), or ``unchanged`` if it holds none. A pin, a latch
    or a rollout in progress does not stop it: it changes no args and decides nothing, it only takes back a
    secret that should never have been written. Restore from the new record gives the same args as from the old one."""
    removed = view.record.removed
    upgraded = specargs.upgraded_record(removed, secret_flags) if removed is not None else None
    if upgraded is None:
        return ActResult(Outcome.UNCHANGED, REDACT, "the removal record holds no credential", view)
    return Plan(view.command, view.args, replace(view.record, removed=upgraded), ())


# Why a disable finds nothing to remove while the engine speculates, and what the operator can do.
NOT_IN_ARGS = (
    "vLLM reports speculative decoding, but the container's args carry no speculation flag: it is turned on "
    "where the sidecar cannot turn it off by removing a flag, most likely a speculators-format checkpoint given "
    "as --model (its config.json names the verifier and carries the draft), or a --config file. Nothing was "
    "changed. To let the sidecar act, start vLLM with the verifier as --model and the checkpoint in "
    "--speculative-config (and --served-model-name if clients use the checkpoint's name)"
)


def _refusal(view: TargetView, action: Action, decision: Decision | None) -> ActResult | None:
    name = str(action)
    want_on = action is Action.ENABLE
    if not want_on and not view.speculation and decision is not None and view.record.removed is None:
        # An automatic disable is decided only on windows in which the engine reported speculation.
        return check_decision(view, action, decision) or ActResult(Outcome.NOT_REMOVABLE, name, NOT_IN_ARGS, view)
    if view.speculation == want_on:
        detail = f"speculation is already {'on' if want_on else 'off'}"
        if not want_on and view.record.removed is None:
            detail = (
                "no speculation flag in the container's args: speculation is off, or turned on where the "
                "sidecar cannot remove it (a speculators checkpoint as --model, a --config file)"
            )
        return ActResult(Outcome.UNCHANGED, name, detail, view)
    if decision is None:  # a human: only a contrary pin stops them (they set it; they can remove it)
        pin = view.record.pin
        if pin is not None and (pin == "on") != want_on:
            return ActResult(Outcome.PINNED, name, f"pinned {pin}: remove the pin first", view)
        return None
    return check_decision(view, action, decision)


def check_decision(view: TargetView, action: Action, decision: Decision) -> ActResult | None:
    """An automatic write goes ahead only on the state it was decided on."""
    name = str(action)
    if decision.action is not action:
        return ActResult(Outcome.ERROR, name, f"decision says {decision.action}, not {name}", view)
    if not decision.write:
        return ActResult(Outcome.DRY_RUN, name, "dry run: nothing written", view)
    if decision.prior is not None and view.record != decision.prior:
        return ActResult(Outcome.CONFLICT, name, "the control annotations changed since the decision", view)
    if view.record.latched and view.record.pin is None:
        return ActResult(Outcome.LATCHED, name, f"latched: {view.record.latched}", view)
    if not view.rollout_complete:
        return ActResult(Outcome.ROLLOUT_PENDING, name, "the last rollout has not finished", view)
    return None


def _next_record(
    current: ControlRecord, action: Action, reason: str, decision: Decision | None, now: float
) -> ControlRecord:
    if decision is not None:
        # The policy already computed history, trial schedule and so on from the record it was given.
        return decision.state.record
    manual = current.toggled(now, str(action), By.MANUAL, reason, current.removed)
    return replace(manual, latched=None, trial_attempts=0, next_trial_at=None)  # a human resets automation


def view_of(
    target: str,
    command: list[str] | None,
    args: list[str] | None,
    record: ControlRecord,
    rollout_complete: bool,
    *,
    image: str | None = None,
) -> TargetView:
    return TargetView(target, command, args, record, rollout_complete, specargs.find(command, args), image)


def toggle_log_line(action: str, reason: str, target: str, planned: Plan, **extra: str) -> str:
    """The one structured (JSON) log line of a write to a target, the same for every actuator."""
    return json.dumps(
        {
            "event": "speculation_toggle"
            if action in ("disable", "enable", "reduce-k", "schedule-k")
            else "control_record",
            "action": action,
            "reason": reason,
            "target": target,
            "flags": list(planned.flags),
            "by": str(planned.record.changed_by or ""),
            **extra,
        },
        sort_keys=True,
    )


def wall_clock() -> float:
    return time.time()
