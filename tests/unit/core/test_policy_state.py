"""The persisted decision state (annotations) and the observation the policy reads from ModelStats."""

from __future__ import annotations

import json
from dataclasses import replace

from sidecar.core import annotations as ann
from sidecar.core.annotations import By, ControlRecord, Toggle
from sidecar.core.policy import observation_from_stats
from sidecar.core.stats import ModelStats, Quantiles
from sidecar.core.verdict import Verdict

T0 = 1_800_000_000.25


def test_a_full_record_survives_the_trip_through_annotations() -> None:
    record = ControlRecord(
        state="off",
        reason="low_acceptance",
        changed_at=T0,
        changed_by=By.SIDECAR,
        removed={"version": 1, "edits": [{"field": "args", "index": 2, "items": ["--spec-tokens", "3"]}]},
        history=(Toggle(T0 - 100, "enable", By.MANUAL, "manual"), Toggle(T0, "disable", By.SIDECAR, "x")),
        pin="on",
        latched="5 toggles",
        trial_attempts=2,
        next_trial_at=T0 + 3600,
    )
    written = ann.to_annotations(record)
    assert all(key.startswith("spec-sidecar.io/") for key in written)
    stored = {k: v for k, v in written.items() if v is not None}  # as the API server would keep them
    assert ann.from_annotations(stored) == record


def test_an_empty_record_writes_removals_for_every_key() -> None:
    assert ann.to_annotations(ControlRecord()) == dict.fromkeys(ann.KEYS)


def test_times_are_rfc3339_utc() -> None:
    assert ann.timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert ann.parse_timestamp("1970-01-01T00:01:00Z") == 60.0


def test_malformed_annotations_read_as_absent_not_as_a_crash() -> None:
    broken = {
        ann.STATE: "maybe",
        ann.CHANGED_AT: "yesterday",
        ann.CHANGED_BY: "robot",
        ann.REMOVED_ARGS: "{not json",
        ann.HISTORY: json.dumps([{"at": "x"}, 3, {"at": "1970-01-01T00:00:00Z", "action": "enable", "by": "manual"}]),
        ann.PIN: " ON ",
        ann.TRIAL: "[]",
        "unrelated/key": "kept out",
    }
    record = ann.from_annotations(broken)
    assert record == ControlRecord(pin="on", history=(Toggle(0.0, "enable", By.MANUAL, ""),))


def test_history_is_capped_so_the_annotation_stays_small() -> None:
    record = ControlRecord()
    for i in range(100):
        record = record.toggled(float(i), "disable", By.SIDECAR, "x", None)
    assert len(record.history) == ann.MAX_HISTORY
    assert record.history[-1].at == 99.0


def stats(**overrides: object) -> ModelStats:
    base: dict[str, object] = {
        "model_name": "m",
        "speculation": True,
        "drafts": 100.0,
        "draft_tokens": 400.0,
        "accepted_tokens": 120.0,
        "acceptance_ratio": 0.3,
        "mean_acceptance_length": 2.2,
        "alpha_estimate": 0.5,
        "num_speculative_tokens": 4,
        "position_acceptance": (0.5, 0.3, 0.2, 0.2),
        "breakeven_acceptance_length": 1.4,
        "expected_speedup": 1.5,
        "latency": {"tpot": Quantiles(0.01, 0.02, 0.03, 0.05)},
        "latency_observations": {"tpot": 50.0},
        "kv_cache_usage": None,
        "generation_tokens": None,
        "generation_tokens_per_second": None,
        "verdict": Verdict.DISABLE,
    }
    base.update(overrides)
    return ModelStats(**base)  # type: ignore[arg-type]


def test_observation_takes_what_the_policy_needs_from_model_stats() -> None:
    obs = observation_from_stats(stats(), engine_up=True, window_seconds=60.0, baseline={"tpot": 2.0})
    assert (obs.acceptance_ratio, obs.draft_tokens, obs.mean_acceptance_length) == (0.3, 400.0, 2.2)
    assert (obs.num_speculative_tokens, obs.breakeven_acceptance_length, obs.verdict) == (4, 1.4, "disable")
    assert obs.p99_p50_ratio == {"tpot": 5.0}
    assert obs.p99_p50_baseline == {"tpot": 2.0}


def test_no_model_stats_is_an_observation_without_speculation() -> None:
    obs = observation_from_stats(None, engine_up=False, window_seconds=None)
    assert not obs.engine_up and not obs.speculation and obs.acceptance_ratio is None


def test_a_toggled_record_equals_itself_read_back_from_annotations_at_any_time() -> None:
    for now in (T0, 1_800_000_000.123456, 1_799_999_999.9999):
        record = ControlRecord().toggled(now, "disable", By.SIDECAR, "x", {"version": 1})
        record = replace(record, next_trial_at=ann.stored_time(now + 1800.5))
        stored = {k: v for k, v in ann.to_annotations(record).items() if v is not None}
        assert ann.from_annotations(stored) == record
