"""The actuator contract on a local YAML manifest (``--deployment-file``): no cluster needed.

The file may hold many documents; the target is the Deployment (optionally by name) that has the named
container. Edits go through ruamel.yaml's round-trip mode and change the args list in place (items are
deleted and inserted, never the whole list rebuilt), so comments, quoting and layout elsewhere survive.
The write is atomic (temp file in the same directory, fsync, rename) and guarded like the Kubernetes patch:
under an exclusive lock, the file must still hold exactly the bytes we planned on, else it is a conflict.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import io
import itertools
import logging
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from sidecar.core.actuator import (
    REDACT,
    REDACT_REASON,
    ActResult,
    Clock,
    Outcome,
    Plan,
    TargetError,
    TargetView,
    guard_config,
    plan,
    plan_record,
    plan_redaction,
    plan_reduce_k,
    plan_schedule_k,
    toggle_log_line,
    view_of,
    wall_clock,
)
from sidecar.core.annotations import ControlRecord, from_annotations, to_annotations
from sidecar.core.policy import Action, Decision
from sidecar.core.specargs import DEFAULT_SECRET_FLAGS

log = logging.getLogger("spec_sidecar.manifest")

# Temp files are ``.<manifest>.spec-sidecar-<16 hex digits>.tmp``: a name no editor or other tool produces, so
# the clean-up after a killed writer can never delete someone else's file (``.deploy.yaml.swp``, ``.orig``).
_TEMP_TAG = "spec-sidecar-"
_TEMP_RANDOM = "[0-9a-f]{16}"  # secrets.token_hex(8)
_TEMP_SUFFIX = ".tmp"


class ManifestError(TargetError):
    """The manifest cannot be read or has no such container. ``reason`` is a metric label."""


@dataclass
class _Loaded:
    text: str
    digest: str
    docs: list[Any]
    deployment: CommentedMap
    container: CommentedMap


class ManifestActuator:
    """The actuator contract (:class:`sidecar.core.actuator.Actuator`) on one container in a YAML file."""

    def __init__(
        self,
        path: str | Path,
        *,
        container: str,
        deployment: str | None = None,
        clock: Clock = wall_clock,
        secret_flags: Sequence[str] = DEFAULT_SECRET_FLAGS,
    ) -> None:
        self.path, self.container, self.deployment, self.clock = Path(path), container, deployment, clock
        self.secret_flags = tuple(secret_flags)
        self.errors: Counter[str] = Counter()
        self.target = f"file:{self.path} container={container}"

    def read(self) -> TargetView:
        return self._view(self._load())

    def disable(self, reason: str, decision: Decision | None = None) -> ActResult:
        return self._write(
            str(Action.DISABLE),
            reason,
            lambda v: plan(v, Action.DISABLE, reason, decision, self.clock(), secret_flags=self.secret_flags),
        )

    def enable(self, reason: str, decision: Decision | None = None, *, force: bool = False) -> ActResult:
        return self._write(
            str(Action.ENABLE), reason, lambda v: plan(v, Action.ENABLE, reason, decision, self.clock(), force=force)
        )

    def reduce_k(self, k: int | None, reason: str, decision: Decision | None = None) -> ActResult:
        return self._write(
            str(Action.REDUCE_K),
            reason,
            lambda v: plan_reduce_k(v, k, reason, decision, self.clock(), secret_flags=self.secret_flags),
        )

    def schedule_k(
        self, schedule: Sequence[Sequence[int]] | None, reason: str, decision: Decision | None = None
    ) -> ActResult:
        return self._write(
            str(Action.SCHEDULE_K),
            reason,
            lambda v: plan_schedule_k(v, schedule, reason, decision, self.clock(), secret_flags=self.secret_flags),
        )

    def write_record(self, record: ControlRecord, action: str, decision: Decision | None = None) -> ActResult:
        return self._write(action, str(record.reason or action), lambda v: plan_record(v, record, action, decision))

    def redact_record(self) -> ActResult:
        return self._write(REDACT, REDACT_REASON, lambda v: plan_redaction(v, self.secret_flags))

    # A file has no rollout to watch: whoever restarts the engine from it sees whether it starts. The config check
    # before every write (``guard_config``) applies here as on a Deployment.

    def revert_rollout(self, timeout: float) -> ActResult:
        del timeout
        return ActResult(Outcome.UNCHANGED, "revert", "a manifest file has no rollout to watch")

    def settle_rollout(self) -> ActResult:
        return ActResult(Outcome.UNCHANGED, "settle", "a manifest file has no rollout to watch")

    # --- internals ---------------------------------------------------------------------------------------

    def _view(self, loaded: _Loaded) -> TargetView:
        command, args = _strings(loaded.container.get("command")), _strings(loaded.container.get("args"))
        annotations = (loaded.deployment.get("metadata") or {}).get("annotations")
        record = from_annotations({str(k): str(v) for k, v in (annotations or {}).items()})
        image = loaded.container.get("image")
        return view_of(
            self.target, command, args, record, rollout_complete=True, image=image if isinstance(image, str) else None
        )

    def _write(self, action: str, reason: str, planner: Callable[[TargetView], Plan | ActResult]) -> ActResult:
        try:
            with _locked(self.path):
                _remove_stale_temp_files(self.path)
                loaded = self._load()
                view = self._view(loaded)
                planned = planner(view)
                if isinstance(planned, ActResult):
                    return planned
                if (planned.command, planned.args) != (view.command, view.args):
                    refused = guard_config(view, planned, action)
                    if refused is not None:
                        log.warning("%s refused on %s: %s", action, self.target, refused.detail)
                        return refused
                _apply(loaded, planned)
                text = _dump(loaded.docs, loaded.text)
                if _digest(self.path.read_text(encoding="utf-8")) != loaded.digest:
                    self.errors["conflict"] += 1
                    return ActResult(Outcome.CONFLICT, action, f"{self.path} changed while planning")
                _atomic_write(self.path, text)
        except (ManifestError, OSError) as exc:
            self.errors[getattr(exc, "reason", "io_error")] += 1
            return ActResult(Outcome.ERROR, action, str(exc))
        after = self.read()
        log.info(toggle_log_line(action, reason, self.target, planned))
        return ActResult(Outcome.CHANGED, action, f"{action} {self.target}: {reason}", after, planned.flags)

    def _load(self) -> _Loaded:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ManifestError("not_found", f"{self.path}: no such file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError("unreadable", f"{self.path}: {getattr(exc, 'strerror', None) or exc}") from exc
        try:
            docs = list(round_trip_yaml(text).load_all(text))
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ManifestError("not_yaml", f"{self.path} is not YAML{where} ({problem})") from exc
        for doc in docs:
            if not isinstance(doc, CommentedMap) or doc.get("kind") != "Deployment":
                continue
            if self.deployment is not None and (doc.get("metadata") or {}).get("name") != self.deployment:
                continue
            containers = (((doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
            for container in containers:
                if isinstance(container, CommentedMap) and container.get("name") == self.container:
                    return _Loaded(text, _digest(text), docs, doc, container)
        which = f"Deployment {self.deployment!r}" if self.deployment else "any Deployment"
        raise ManifestError("container_not_found", f"no container {self.container!r} in {which} of {self.path}")


def _strings(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def _apply(loaded: _Loaded, planned: Plan) -> None:
    for field, new in (("command", planned.command), ("args", planned.args)):
        _edit_list(loaded.container, field, new)
    metadata = loaded.deployment.setdefault("metadata", CommentedMap())
    annotations = metadata.get("annotations")
    wanted = to_annotations(planned.record)
    if annotations is None:
        present = {k: string_scalar(v) for k, v in wanted.items() if v is not None}
        if present:
            metadata["annotations"] = CommentedMap(present)
        return
    for key, value in wanted.items():
        if value is None:
            annotations.pop(key, None)
        elif annotations.get(key) != value:
            annotations[key] = string_scalar(value)


def _edit_list(container: CommentedMap, field: str, new: list[str] | None) -> None:
    """Turn the list into ``new`` by deleting/inserting items in place, so untouched items keep comments."""
    seq = container.get(field)
    if new is None:
        if seq is not None:
            del container[field]
        return
    if seq is None:
        container[field] = CommentedSeq(new)
        return
    old = [str(v) for v in seq]
    ops = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(ops):  # from the end, so earlier indices stay valid
        if tag == "equal":
            continue
        styled = [_styled_like(seq[i1] if i1 < len(seq) and tag == "replace" else None, s) for s in new[j1:j2]]
        for i in reversed(range(i1, i2)):
            del seq[i]
        for offset, value in enumerate(styled):
            seq.insert(i1 + offset, value)


def _styled_like(previous: Any, text: str) -> Any:
    """A replaced item keeps its style: a shell script its block style (``|`` or ``>``), a quoted arg its quotes
    (reduce-k rewrites ``"5"`` in place, and the restore must write ``"5"`` again, not ``'5'``)."""
    for style in (LiteralScalarString, FoldedScalarString, DoubleQuotedScalarString, SingleQuotedScalarString):
        if isinstance(previous, style):
            return style(text)
    return string_scalar(text)


def string_scalar(text: str) -> Any:
    """A string that stays a string for every reader. ruamel writes YAML 1.2, where ``off``, ``yes`` or ``on``
    are plain strings, but kubectl and the API server read YAML 1.1, where they are booleans (and an
    annotation or an arg must be a string): quote whatever a YAML 1.1 reader would not read back as itself."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not a plain scalar at all: ruamel quotes it as needed
    # Single quotes: what ruamel itself uses for strings that need quoting, so restored args keep their bytes.
    return text if isinstance(loaded, str) else SingleQuotedScalarString(text)


def round_trip_yaml(text: str) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines (args JSON, scripts)
    mapping, sequence, offset = _detect_indent(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    yaml.explicit_start = text.lstrip().startswith("---")
    return yaml


def _detect_indent(text: str) -> tuple[int, int, int]:
    """The file's own indentation: mapping step, and where list dashes sit under their key."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    mappings: Counter[int] = Counter()
    offsets: Counter[int] = Counter()
    for parent, child in itertools.pairwise(lines):
        if not parent.rstrip().endswith(":") or parent.lstrip().startswith("- "):
            continue
        step = _indent(child) - _indent(parent)
        if step < 0:
            continue
        (offsets if child.lstrip().startswith("- ") else mappings)[step] += 1
    mapping = mappings.most_common(1)[0][0] if mappings else 2
    offset = offsets.most_common(1)[0][0] if offsets else 0
    return mapping or 2, max(mapping, offset + 2), offset


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _dump(docs: Sequence[Any], original: str) -> str:
    out = io.StringIO()
    round_trip_yaml(original).dump_all(docs, out)
    return out.getvalue()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock beside the manifest (the manifest itself is replaced by rename).

    A manifest that is not there (deleted or moved while the sidecar runs) is refused before the lock file is
    made, so no lock is left beside a file that does not exist. The lock file is never removed afterwards: a
    writer waiting on its inode would then lock a file no one else locks.
    """
    if not path.exists():
        raise ManifestError("not_found", f"{path}: no such file")
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temp_name(path: Path, random_part: str) -> str:
    return f".{path.name}.{_TEMP_TAG}{random_part}{_TEMP_SUFFIX}"


def _is_our_temp_file(path: Path, candidate: Path) -> bool:
    """Only a name :func:`_atomic_write` makes for this manifest."""
    head, tail = re.escape(f".{path.name}.{_TEMP_TAG}"), re.escape(_TEMP_SUFFIX)
    return re.fullmatch(f"{head}{_TEMP_RANDOM}{tail}", candidate.name) is not None


def _remove_stale_temp_files(path: Path) -> None:
    """Temp files a killed writer left behind; under the lock, no live writer can own one."""
    for stale in path.parent.iterdir():
        if _is_our_temp_file(path, stale):
            stale.unlink(missing_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777
    temp = path.with_name(_temp_name(path, secrets.token_hex(8)))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp).chmod(mode)
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
