"""The draft cost ratio c (one draft step's cost over one target step's), and where its value comes from.

The speedup model (docs/math.md) needs c: expected speedup L / (1 + k·c), break-even L = 1 + k·c. Nothing in an
engine's metrics says what c is, so the sidecar takes it, in this order, from:

  measured    the engine's own latency with speculation on and off (sidecar.core.measured_speedup);
  configured  ``--draft-cost-ratio``, set by the operator;
  assumed     a prior from the speculative config: n-gram and suffix lookups cost about nothing (0), EAGLE and
              MTP heads are a layer or two beside the target (0.05), a separate draft model costs about its
              share of the target's per-token compute (from both models' ``config.json`` when readable);
  unknown     none of the above: 0 is used, so the expected speedup is an upper bound (drafts taken as free).

Whatever is shown beside a speedup says which of these it is; an assumed or unknown c is never presented as a fact.
Pure: the config files are read by an adapter (sidecar.adapters.model_config) and handed in as mappings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sidecar.core.specargs import Flag

# Methods whose drafts come from a lookup in the text already there: no model runs to propose them.
LOOKUP_METHODS = frozenset({"ngram", "ngram_gpu", "suffix"})
# Methods whose drafts come from a small head on the target's own hidden states (a layer or two).
HEAD_METHODS = frozenset(
    {"eagle", "eagle3", "mtp", "deepseek_mtp", "medusa", "mlp_speculator", "ernie_mtp", "qwen3_next_mtp", "mimo_mtp"}
)
DRAFT_MODEL_METHODS = frozenset({"draft_model"})
# A head is one decoder layer (sometimes two) beside a target of tens: a few percent of a target step.
HEAD_PRIOR = 0.05


class CostSource(StrEnum):
    MEASURED = "measured"
    CONFIGURED = "configured"
    ASSUMED = "assumed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class DraftCost:
    """The c the formulas use, where it comes from, and a sentence saying why that value."""

    ratio: float
    source: CostSource
    basis: str

    @property
    def assumed(self) -> bool:
        """True when c is not known from the operator or from measurement: numbers built on it are estimates."""
        return self.source in (CostSource.ASSUMED, CostSource.UNKNOWN)

    @property
    def label(self) -> str:
        """How people read it beside a number: 'c = 0.05, assumed (EAGLE/MTP head)'."""
        return f"c = {self.ratio:.3g}, {self.source}"


UNKNOWN = DraftCost(0.0, CostSource.UNKNOWN, "draft cost unknown: drafts taken as free, so this is an upper bound")


def configured(ratio: float) -> DraftCost:
    return DraftCost(ratio, CostSource.CONFIGURED, "set with --draft-cost-ratio")


@dataclass(frozen=True)
class SpeculativeSettings:
    """What the speculative config says about the drafts' cost: the method and, for a draft model, its path."""

    method: str | None
    draft_model: str | None
    num_speculative_tokens: int | None = None


def speculative_settings(flags: Sequence[Flag]) -> SpeculativeSettings | None:
    """The method and draft model from the speculation flags found in a container (sidecar.core.specargs.find).

    Every spelling vLLM takes: ``--speculative-config JSON`` (or ``=JSON``), dotted keys
    (``--speculative-config.method ngram``), ``--spec-method``/``--spec-model``/``--spec-tokens``, and the legacy
    ``--speculative-model`` (``[ngram]`` meant n-gram lookup) and ``--num-speculative-tokens``. None when no flag
    configures speculation.
    """
    values: dict[str, Any] = {}
    found = False
    for flag in flags:
        key, value = _flag_value(flag)
        if value is None:
            continue
        found = True
        if flag.flag in ("--speculative-config", "-sc") and key is None:
            parsed = _json_object(value)
            values.update({k: v for k, v in parsed.items() if k not in values})
        elif key is not None:
            values.setdefault(key, value)
        elif flag.flag == "--spec-method":
            values.setdefault("method", value)
        elif flag.flag in ("--spec-model", "--speculative-model"):
            if value == "[ngram]":
                values.setdefault("method", "ngram")
            else:
                values.setdefault("model", value)
        elif flag.flag in ("--spec-tokens", "--num-speculative-tokens"):
            values.setdefault("num_speculative_tokens", value)
    if not found:
        return None
    method = values.get("method")
    model = values.get("model")
    tokens = _int(values.get("num_speculative_tokens"))
    return SpeculativeSettings(
        method=str(method).lower() if method is not None else None,
        draft_model=str(model) if model is not None else None,
        num_speculative_tokens=tokens,
    )


def settings_from_json(text: str) -> SpeculativeSettings:
    """The method and draft model of a ``--speculative-config`` JSON object (ValueError when it is not one)."""
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError(f'expected a JSON object such as {{"method": "ngram"}}, got {text!r}')
    method, model = parsed.get("method"), parsed.get("model")
    return SpeculativeSettings(
        method=str(method).lower() if method is not None else None,
        draft_model=str(model) if model is not None else None,
        num_speculative_tokens=_int(parsed.get("num_speculative_tokens")),
    )


def target_model(command: Sequence[str] | None, args: Sequence[str] | None) -> str | None:
    """The target model an engine's command line names: ``--model X``, ``--model=X`` or ``vllm serve X``."""
    tokens = [*(command or ()), *(args or ())]
    for i, token in enumerate(tokens):
        if token.startswith("--model="):
            return token.split("=", 1)[1]
        if token == "--model" and i + 1 < len(tokens):
            return tokens[i + 1]
        if token == "serve" and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            return tokens[i + 1]
    return None


def _flag_value(flag: Flag) -> tuple[str | None, str | None]:
    """(dotted key or None, value) of one flag occurrence as written."""
    first = flag.text[0] if flag.text else ""
    name, eq, inline = first.partition("=")
    _, dot, key = name.partition(".")
    value = inline if eq else (flag.text[1] if len(flag.text) > 1 else None)
    return (key if dot else None), value


def _json_object(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def method_family(settings: SpeculativeSettings) -> str | None:
    """'lookup', 'head' or 'draft_model': what kind of proposer the config names, or None when it cannot tell."""
    method = settings.method
    if method in LOOKUP_METHODS:
        return "lookup"
    if method in HEAD_METHODS or (method is not None and ("eagle" in method or "mtp" in method)):
        return "head"
    if method in DRAFT_MODEL_METHODS:
        return "draft_model"
    if method is None and settings.draft_model is not None:
        # vLLM infers the method from the model's name when none is given: an EAGLE head, else a draft model.
        return "head" if "eagle" in settings.draft_model.lower() else "draft_model"
    return None


def prior(
    settings: SpeculativeSettings | None,
    draft_config: Mapping[str, Any] | None = None,
    target_config: Mapping[str, Any] | None = None,
) -> DraftCost:
    """The assumed c for a speculative config (UNKNOWN when it cannot say)."""
    if settings is None:
        return UNKNOWN
    family = method_family(settings)
    if family == "lookup":
        return DraftCost(0.0, CostSource.ASSUMED, f"{settings.method} drafts are looked up in the text: about free")
    if family == "head":
        return DraftCost(HEAD_PRIOR, CostSource.ASSUMED, "an EAGLE/MTP head is a layer or two beside the target")
    if family == "draft_model":
        share = compute_ratio(draft_config, target_config)
        if share is None:
            return replace_basis(UNKNOWN, "draft model's or target's config.json not readable: drafts taken as free")
        return DraftCost(share, CostSource.ASSUMED, "the draft model's per-token compute over the target's")
    return UNKNOWN


def replace_basis(cost: DraftCost, basis: str) -> DraftCost:
    return DraftCost(cost.ratio, cost.source, basis)


def per_token_compute(config: Mapping[str, Any]) -> float | None:
    """Multiply-adds per generated token of a decoder, from a Hugging Face ``config.json`` (weights touched once).

    Attention projections about 4·h², the MLP 3·h·i when gated (SiLU: Llama, Qwen, Mistral) or 2·h·i, per layer,
    plus the LM head h·v. The embedding lookup is no compute. None when the sizes are missing.
    """
    text = config.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" not in config:
        config = text
    hidden = _first_number(config, ("hidden_size", "n_embd", "d_model"))
    layers = _first_number(config, ("num_hidden_layers", "n_layer", "num_layers"))
    if hidden is None or layers is None or hidden <= 0 or layers <= 0:
        return None
    inner = _first_number(config, ("intermediate_size", "n_inner", "ffn_dim")) or 4 * hidden
    vocab = _first_number(config, ("vocab_size",)) or 0.0
    activation = str(config.get("hidden_act") or config.get("activation_function") or "")
    matrices = 3 if activation in ("silu", "swiglu") else 2
    return layers * (4 * hidden * hidden + matrices * hidden * inner) + hidden * vocab


def compute_ratio(draft: Mapping[str, Any] | None, target: Mapping[str, Any] | None) -> float | None:
    """The draft's per-token compute over the target's (None when either is unknown)."""
    if draft is None or target is None:
        return None
    d, t = per_token_compute(draft), per_token_compute(target)
    if d is None or t is None or t <= 0:
        return None
    return d / t


def _first_number(config: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
