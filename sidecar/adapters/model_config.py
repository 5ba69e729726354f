"""Read a model's ``config.json`` from a local folder, for the draft cost assumed from a draft model's size.

Only local paths are read: a Hugging Face hub id (``org/name`` with no such folder here) is not fetched, so the
sidecar never reaches the network for it; the cost is then unknown and shown as such (sidecar.core.cost_prior).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.core import cost_prior
from sidecar.core.cost_prior import DraftCost, SpeculativeSettings

log = logging.getLogger("spec_sidecar.model_config")
MAX_CONFIG_BYTES = 1_000_000  # a config.json is a few kB; anything larger is not one


def read_config_json(model: str | None) -> Mapping[str, Any] | None:
    """The JSON object in ``<model>/config.json`` (or ``model`` itself if it is that file); None if unreadable."""
    if not model:
        return None
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        if path.name != "config.json" or not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("cannot read %s for the draft cost: %s", path, exc)
        return None
    return parsed if isinstance(parsed, dict) else None


def draft_cost_prior(settings: SpeculativeSettings | None, target_model: str | None) -> DraftCost:
    """The assumed c for a speculative config, reading the draft's and the target's config.json when needed."""
    if settings is None:
        return cost_prior.UNKNOWN
    if cost_prior.method_family(settings) != "draft_model":
        return cost_prior.prior(settings)
    return cost_prior.prior(settings, read_config_json(settings.draft_model), read_config_json(target_model))


def configured_draft_cost_prior(speculative_config: str | None, target_model: str | None) -> DraftCost:
    """The c assumed from ``--speculative-config`` (and ``--target-model``): unknown without them."""
    if not speculative_config:
        return cost_prior.UNKNOWN
    return draft_cost_prior(cost_prior.settings_from_json(speculative_config), target_model)
