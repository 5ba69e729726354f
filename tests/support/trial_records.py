"""The control records of a timed trial (started, passed), shared by a test and the writer process it starts."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.annotations import By, ControlRecord, Toggle

T0 = 1_800_000_000.0


STARTED = ControlRecord(
    state="on",
    reason="trial_start",
    changed_at=T0,
    changed_by=By.SIDECAR,
    history=(Toggle(T0, "enable", By.SIDECAR, "trial_start"),),
    trial_attempts=1,
    next_trial_at=T0,
)


PASSED = replace(STARTED, reason="trial_passed", trial_attempts=0, next_trial_at=None)
