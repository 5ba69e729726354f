"""Control records and decisions the Kubernetes actuator tests hand over, on the test API server and the real one."""

from __future__ import annotations

from typing import Any

from sidecar.core import annotations as ann
from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.policy import Action, Decision, PolicyConfig, PolicyState, Reason, TrialConfig
from tests.kubeapi.manifests import list_deployment

T0 = 1_800_000_000.0


def auto_decision(action: Action, prior: ControlRecord, reason: Reason = Reason.LOW_ACCEPTANCE) -> Decision:
    """What the policy hands over for an automatic toggle decided on ``prior``."""
    record = prior.toggled(T0, str(action), By.SIDECAR, str(reason), prior.removed)
    state = PolicyState(speculation=action is Action.ENABLE, rollout_complete=False, record=record)
    return Decision(action, reason, state, True, "test", prior=prior)


TRIAL_CONFIG = PolicyConfig(trial=TrialConfig(after=1800, max_tries=3, windows=3))
TRIAL_STARTED = ControlRecord(
    state="on",
    reason="trial_start",
    changed_at=T0,
    changed_by=By.SIDECAR,
    history=(Toggle(T0 - 3600, "disable", By.SIDECAR, "low_acceptance"), Toggle(T0, "enable", By.SIDECAR, "x")),
    trial_attempts=1,
    next_trial_at=T0,
)


def trial_deployment() -> dict[str, Any]:
    """Speculation back on by the sidecar's trial; the rollout that restarted the pod has finished."""
    notes = {k: v for k, v in ann.to_annotations(TRIAL_STARTED).items() if v is not None}
    return list_deployment(annotations={"team": "ml", **notes})
