"""The draft cost c: configured, assumed from the speculative config (every spelling), or unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.adapters.model_config import draft_cost_prior, read_config_json
from sidecar.core import cost_prior, specargs
from sidecar.core.cost_prior import CostSource, SpeculativeSettings

LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
            "hidden_act": "silu"}  # fmt: skip
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "vocab_size": 128256,
            "hidden_act": "silu"}  # fmt: skip


def settings_of(args: list[str]) -> SpeculativeSettings | None:
    return cost_prior.speculative_settings(specargs.find(None, args))


@pytest.mark.parametrize(
    ("args", "method", "model"),
    [
        (["--speculative-config", '{"method":"ngram","num_speculative_tokens":3}'], "ngram", None),
        (['--speculative-config={"method":"draft_model","model":"/m/d"}'], "draft_model", "/m/d"),
        (["--speculative-config.method", "suffix"], "suffix", None),
        (["--spec-method", "eagle3", "--spec-model", "/m/e", "--spec-tokens", "2"], "eagle3", "/m/e"),
        (["--speculative-model", "[ngram]", "--num-speculative-tokens", "4"], "ngram", None),
        (["--speculative-model", "/m/small"], None, "/m/small"),
    ],
)
def test_the_method_and_draft_model_are_read_from_every_spelling_of_the_flags(
    args: list[str], method: str | None, model: str | None
) -> None:
    found = settings_of(["--model", "/m/t", *args])
    assert found is not None
    assert (found.method, found.draft_model) == (method, model)


def test_a_container_without_speculation_flags_has_no_speculative_settings() -> None:
    assert settings_of(["--model", "/m/t", "--max-model-len", "1024"]) is None


def test_lookups_are_assumed_free_and_heads_small_and_both_are_labelled_assumed() -> None:
    ngram = cost_prior.prior(SpeculativeSettings("ngram", None))
    suffix = cost_prior.prior(SpeculativeSettings("suffix", None))
    eagle = cost_prior.prior(SpeculativeSettings("eagle3", "/m/e"))
    mtp = cost_prior.prior(SpeculativeSettings("deepseek_mtp", None))
    assert (ngram.ratio, suffix.ratio) == (0.0, 0.0)
    assert eagle.ratio == mtp.ratio == cost_prior.HEAD_PRIOR
    assert all(c.source is CostSource.ASSUMED and c.assumed for c in (ngram, suffix, eagle, mtp))
    assert "assumed" in eagle.label


def test_a_draft_model_costs_its_per_token_compute_over_the_targets() -> None:
    cost = cost_prior.prior(SpeculativeSettings("draft_model", "/m/d"), LLAMA_1B, LLAMA_8B)
    # 1B-class draft against an 8B-class target: about a sixth to a fifth of the compute.
    assert 0.12 < cost.ratio < 0.25
    assert cost.source is CostSource.ASSUMED


def test_a_draft_model_whose_config_cannot_be_read_is_unknown_and_says_the_speedup_is_an_upper_bound() -> None:
    cost = cost_prior.prior(SpeculativeSettings("draft_model", "org/name"), None, LLAMA_8B)
    assert cost.source is CostSource.UNKNOWN and cost.ratio == 0.0
    assert "config.json" in cost.basis and "free" in cost.basis


def test_no_speculative_config_at_all_is_unknown_not_a_fact() -> None:
    assert cost_prior.prior(None) is cost_prior.UNKNOWN
    assert cost_prior.UNKNOWN.assumed and "upper bound" in cost_prior.UNKNOWN.basis


def test_a_configured_ratio_is_not_labelled_assumed() -> None:
    cost = cost_prior.configured(0.2)
    assert (cost.ratio, cost.source, cost.assumed) == (0.2, CostSource.CONFIGURED, False)


def test_a_method_left_out_is_inferred_from_the_model_name_as_vllm_does() -> None:
    assert cost_prior.method_family(SpeculativeSettings(None, "yuhuili/EAGLE-LLaMA3-Instruct-8B")) == "head"
    assert cost_prior.method_family(SpeculativeSettings(None, "/m/small")) == "draft_model"


def test_the_target_model_is_read_from_model_flag_or_serve() -> None:
    assert cost_prior.target_model(None, ["--model", "/m/t"]) == "/m/t"
    assert cost_prior.target_model(None, ["--model=/m/t"]) == "/m/t"
    assert cost_prior.target_model(["vllm", "serve", "/m/t"], ["--port", "8000"]) == "/m/t"
    assert cost_prior.target_model(None, ["--port", "8000"]) is None


def test_a_speculative_config_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        cost_prior.settings_from_json('["ngram"]')
    assert cost_prior.settings_from_json('{"method":"NGRAM"}').method == "ngram"


def test_the_adapter_reads_both_config_files_from_local_folders(tmp_path: Path) -> None:
    draft, target = tmp_path / "draft", tmp_path / "target"
    draft.mkdir()
    target.mkdir()
    (draft / "config.json").write_text(json.dumps(LLAMA_1B))
    (target / "config.json").write_text(json.dumps(LLAMA_8B))
    cost = draft_cost_prior(SpeculativeSettings("draft_model", str(draft)), str(target))
    assert cost.source is CostSource.ASSUMED
    assert cost.ratio == pytest.approx(cost_prior.compute_ratio(LLAMA_1B, LLAMA_8B))


def test_the_adapter_never_fetches_a_hub_id_and_ignores_files_that_are_not_config_json(tmp_path: Path) -> None:
    assert read_config_json("meta-llama/Llama-3.2-1B") is None
    other = tmp_path / "weights.bin"
    other.write_text("{}")
    assert read_config_json(str(other)) is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert read_config_json(str(broken)) is None
