"""The server set-ups the tests use: draft-model speculation, ngram speculation, and none.

All serve the trained model family (scripts/make_model_family.py, docs/model-family.md), whose acceptance falls
gradually with temperature like a real pair's. `noisy_copy_flavour` serves the old tiny target with a noisy copy
of itself as draft, for tests that need its extremes (acceptance near 1 at temperature 0, low at 1.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.engine.provision import model_family, tiny_models

# The family's drafts, smallest first (docs/model-family.md has their acceptance per temperature).
FAMILY_DRAFTS = ("draft-small", "draft-large")
# The larger draft: higher acceptance, and the one the demo and most tests use.
DEFAULT_DRAFT = "draft-large"
NOISY_DRAFT = "draft-noise-0.08"
PER_REQUEST_METRICS = ("--per-request-spec-decode-metrics", "summary")


@dataclass(frozen=True)
class Flavour:
    """What to serve and how: equal flavours mean an already running engine can be reused. The name is a label
    (log file names, messages) and takes no part in equality: a configuration asked for under two names (the
    args an actuator wrote that equal a flavour's) is served by one start."""

    name: str = field(compare=False)
    model_dir: Path
    speculative_config: str | None = None  # JSON for --speculative-config; None = no speculation
    extra_args: tuple[str, ...] = field(default=())

    def server_args(self) -> list[str]:
        args = [] if self.speculative_config is None else ["--speculative-config", self.speculative_config]
        return args + list(self.extra_args)


def _spec_json(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def _draft_flavour(
    models: Path,
    draft: str,
    num_speculative_tokens: int,
    per_request_metrics: bool,
    draft_sample_method: str | None,
    *,
    target: Path | None = None,
) -> Flavour:
    config = {"method": "draft_model", "model": str(models / draft), "num_speculative_tokens": num_speculative_tokens}
    if draft_sample_method is not None:  # vLLM's default is "greedy": the draft's top token, taken as certain
        config["draft_sample_method"] = draft_sample_method
    extra = PER_REQUEST_METRICS if per_request_metrics else ()
    name = f"draft-model:{draft}" if target is None else f"draft-model:{draft}:{target.name}"
    return Flavour(name, target or models / "target", _spec_json(config), extra)


def draft_model_flavour(
    draft: str = DEFAULT_DRAFT,
    num_speculative_tokens: int = 4,
    per_request_metrics: bool = True,
    family: Path | None = None,
    draft_sample_method: str | None = None,
    *,
    target: Path | None = None,
) -> Flavour:
    """The family's target with one of its drafts (FAMILY_DRAFTS, or "target" for the target drafting for
    itself); `family` picks another trained family, `target` serves another target (a wide copy,
    provision.wide_target) with the family's draft."""
    models = family or model_family()
    chosen = (draft, num_speculative_tokens, per_request_metrics, draft_sample_method)
    return _draft_flavour(models, *chosen, target=target)


def noisy_copy_flavour(draft: str = NOISY_DRAFT, per_request_metrics: bool = True) -> Flavour:
    """The old tiny target with a noisy copy of itself as draft (scripts/make_tiny_models.py)."""
    return _draft_flavour(tiny_models(), draft, 4, per_request_metrics, None)


def ngram_flavour(per_request_metrics: bool = False, family: Path | None = None) -> Flavour:
    config = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    extra = PER_REQUEST_METRICS if per_request_metrics else ()
    return Flavour("ngram", (family or model_family()) / "target", _spec_json(config), extra)


def plain_flavour(target: Path | None = None) -> Flavour:
    """No speculation: the family's target, or `target` (a wide copy, provision.wide_target)."""
    return Flavour("plain" if target is None else f"plain:{target.name}", target or model_family() / "target")
