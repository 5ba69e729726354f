"""The server set-ups the tests use: draft-model speculation, ngram speculation, and none."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.engine.provision import tiny_models

# The better of the two drafts make_tiny_models.py builds (see tests/fixtures/README.md for measured acceptance).
DEFAULT_DRAFT = "draft-noise-0.08"
PER_REQUEST_METRICS = ("--per-request-spec-decode-metrics", "summary")


@dataclass(frozen=True)
class Flavour:
    """What to serve and how: equal flavours mean an already running engine can be reused."""

    name: str
    model_dir: Path
    speculative_config: str | None = None  # JSON for --speculative-config; None = no speculation
    extra_args: tuple[str, ...] = field(default=())

    def server_args(self) -> list[str]:
        args = [] if self.speculative_config is None else ["--speculative-config", self.speculative_config]
        return args + list(self.extra_args)


def _spec_json(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def draft_model_flavour(
    draft: str = DEFAULT_DRAFT, num_speculative_tokens: int = 4, per_request_metrics: bool = True
) -> Flavour:
    models = tiny_models()
    config = {"method": "draft_model", "model": str(models / draft), "num_speculative_tokens": num_speculative_tokens}
    extra = PER_REQUEST_METRICS if per_request_metrics else ()
    return Flavour(f"draft-model:{draft}", models / "target", _spec_json(config), extra)


def ngram_flavour(per_request_metrics: bool = False) -> Flavour:
    config = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    extra = PER_REQUEST_METRICS if per_request_metrics else ()
    return Flavour("ngram", tiny_models() / "target", _spec_json(config), extra)


def plain_flavour() -> Flavour:
    return Flavour("plain", tiny_models() / "target")
