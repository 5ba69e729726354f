"""vLLM 0.32, 0.33 and 0.34: the flags, speculative-config keys and metric names each version has.

0.32 runs for real in the engine tests; 0.33 and 0.34 do not run here, so these cases carry facts read from
their wheels (tests/fixtures/README.md, "vllm-source"): the arg shapes their parsers accept, the config keys
their ``SpeculativeConfig`` accepts, and the metric families they register.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sidecar.core import catalog, specargs, vllm_versions
from sidecar.core.policy import Action, Observation, PolicyConfig, PolicyState, Reason, decide
from sidecar.core.vllm_versions import image_version, rejected_keys

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILIES = json.loads((FIXTURES / "vllm-source" / "metric_families.json").read_text())
VERSIONS = ("0.32.0", "0.33.0", "0.34.0")


def version(text: str) -> vllm_versions.Version:
    major, minor, patch = map(int, text.split("."))
    return major, minor, patch


# --- the speculative config's keys -------------------------------------------------------------------------

# (args, keys they set): the spellings each of 0.32, 0.33 and 0.34 parses (the shorthands exist since 0.32).
ARG_SHAPES = [
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'],
     {"method", "num_speculative_tokens"}),
    (['--speculative-config={"method": "eagle3", "model": "org/draft"}'], {"method", "model"}),
    (["--speculative_config", '{"method": "ngram", "prompt-lookup-max": 3}'], {"method", "prompt_lookup_max"}),
    (["-sc", '{"method": "suffix"}'], {"method"}),
    (["--speculative-config.method", "ngram", "--speculative-config.num-speculative-tokens", "3"],
     {"method", "num_speculative_tokens"}),
    (["--spec-method", "draft_model", "--spec-model=org/draft", "--spec-tokens", "4"],
     {"method", "model", "num_speculative_tokens"}),
    (["--speculative-model", "org/draft", "--num-speculative-tokens", "5"], set()),  # legacy: no config keys
    (["--speculative-config", "not json"], set()),
]  # fmt: skip


@pytest.mark.parametrize(("args", "keys"), ARG_SHAPES)
def test_the_keys_a_speculation_flag_sets_are_read_from_every_spelling(args: list[str], keys: set[str]) -> None:
    assert specargs.speculative_config_keys(None, ["--model", "org/target", *args, "--port", "8000"]) == keys


def test_the_keys_are_read_from_a_shell_script_too() -> None:
    script = 'exec vllm serve org/target --speculative-config=\'{"method": "ngram", "use_heterogeneous_vocab": true}\''
    keys = specargs.speculative_config_keys(["/bin/sh", "-c"], [script])
    assert keys == {"method", "use_heterogeneous_vocab"}


@pytest.mark.parametrize("key", ["disable_padded_drafter_batch", "use_heterogeneous_vocab"])
def test_a_key_vllm_0_34_dropped_is_accepted_by_0_32_and_0_33_and_rejected_from_0_34_on(key: str) -> None:
    keys = {"method", "num_speculative_tokens", key}
    assert rejected_keys(keys, (0, 32, 0)) == ()
    assert rejected_keys(keys, (0, 33, 1)) == ()
    assert rejected_keys(keys, (0, 34, 0)) == (key,)
    assert rejected_keys(keys, (0, 36, 2)) == (key,)  # newer than any checked version: the dropped keys only


@pytest.mark.parametrize("text", VERSIONS)
def test_every_checked_version_rejects_a_key_it_does_not_know(text: str) -> None:
    assert rejected_keys({"method", "num_speculative_token"}, version(text)) == ("num_speculative_token",)


def test_keys_added_in_0_33_and_0_34_are_rejected_by_the_versions_before() -> None:
    assert rejected_keys({"fly_window_size"}, (0, 32, 0)) == ("fly_window_size",)
    assert rejected_keys({"fly_window_size"}, (0, 33, 0)) == ()
    assert rejected_keys({"speculator_options"}, (0, 33, 0)) == ("speculator_options",)
    assert rejected_keys({"speculator_options", "draft_decode_context_parallel_size"}, (0, 34, 0)) == ()


def test_a_key_spelled_with_dashes_is_checked_as_vllm_reads_it() -> None:
    assert rejected_keys({"disable-padded-drafter-batch"}, (0, 34, 0)) == ("disable_padded_drafter_batch",)


def test_an_older_or_unknown_version_is_not_checked() -> None:
    assert rejected_keys({"anything"}, (0, 31, 0)) == ()
    assert rejected_keys({"anything"}, None) == ()


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("vllm/vllm-openai:v0.34.0", (0, 34, 0)),
        ("vllm/vllm-openai:0.33.1", (0, 33, 1)),
        ("registry.internal:5000/ml/vllm-openai:v0.34.0-cu130", (0, 34, 0)),
        ("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0", (0, 32, 0)),
        ("vllm/vllm-openai:v0.34", (0, 34, 0)),
        ("vllm/vllm-openai:latest", None),
        ("vllm/vllm-openai:nightly-62d4bc3c7", None),
        ("vllm/vllm-openai@sha256:" + "a" * 64, None),
        ("registry.internal:5000/ml/vllm-openai", None),  # a registry port is not a tag
        ("mycorp/llm-server:1.4.0", None),  # not a vLLM image: its tag is not vLLM's version
        ("", None),
        (None, None),
    ],
)
def test_the_vllm_version_is_read_from_an_image_tag_only_when_it_can_be_trusted(
    image: str | None, expected: vllm_versions.Version | None
) -> None:
    assert image_version(image) == expected


# --- metric names ------------------------------------------------------------------------------------------


def _family(sample_name: str) -> str:
    return re.sub(r"_(total|created|bucket|count|sum)$", "", sample_name)


@pytest.mark.parametrize("text", VERSIONS)
def test_every_vllm_name_the_catalog_reads_first_is_registered_by_each_version(text: str) -> None:
    families = set(FAMILIES[text])
    dialect = catalog.VLLM_V1
    wanted = set(dialect.counters.values())
    wanted |= {names[0] for names in dialect.gauges.values()}
    wanted |= {names[0] for names in dialect.histograms.values()}
    wanted |= {_family(m) for m in dialect.markers}
    assert wanted <= families, sorted(wanted - families)
    # ... and none of the V0 engine's markers, which would be taken for the older dialect
    assert not {_family(m) for m in catalog.VLLM_V0.markers} & families


@pytest.mark.parametrize("text", VERSIONS[1:])
def test_the_0_32_captures_use_only_names_0_33_and_0_34_register(text: str) -> None:
    # prometheus_client drops a counter's "_total" from its family name; a histogram keeps it
    # (vllm:iteration_tokens_total_bucket)
    families = set(FAMILIES[text]) | {_family(f) for f in FAMILIES[text]}
    captured = set()
    for path in (FIXTURES / "vllm").glob("*.txt"):
        for line in path.read_text().splitlines():
            if line.startswith("vllm:"):
                captured.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    assert len(captured) > 50, "no captures read"
    unknown = {name for name in captured if name not in families and _family(name) not in families}
    assert not unknown, sorted(unknown)


# --- a speculators checkpoint as --model: speculation with no flag ----------------------------------------

SPECULATORS_ARGS = ["--model", "org/llama-eagle3-speculator", "--served-model-name", "llama", "--port", "8000"]
CONFIG = PolicyConfig(window_seconds=60.0, min_draft_tokens=100.0, trip_windows=2, cooldown=0.0, manual_grace=0.0)


def low_window() -> Observation:
    return Observation(engine_up=True, speculation=True, acceptance_ratio=0.2, draft_tokens=1000.0, window_seconds=60.0)


def test_a_speculators_checkpoint_as_model_has_no_flag_to_remove() -> None:
    assert not specargs.speculation_configured(None, SPECULATORS_ARGS)
    removal = specargs.remove(None, SPECULATORS_ARGS)
    assert not removal.changed and removal.args == SPECULATORS_ARGS


def test_an_engine_speculating_with_no_flag_is_judged_and_a_failing_run_asks_for_a_disable() -> None:
    state = PolicyState(speculation=False)  # what the args say
    first = decide(low_window(), state, CONFIG, 1000.0)
    assert first.action is Action.NONE and first.state.trip_count == 1
    assert first.state.speculation is False  # kept as the args say, so the next read keeps the count
    second = decide(low_window(), first.state, CONFIG, 1060.0)
    assert (second.action, second.reason) == (Action.DISABLE, Reason.LOW_ACCEPTANCE)


def test_after_the_sidecars_own_removal_an_engine_still_reporting_speculation_is_not_judged() -> None:
    removed = PolicyState(speculation=False).record.__class__(removed={"version": 2, "edits": []})
    decision = decide(low_window(), PolicyState(speculation=False, record=removed), CONFIG, 1000.0)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.SPECULATION_OFF)


# --- the chart's defaults ----------------------------------------------------------------------------------

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "spec-sidecar"


@pytest.mark.parametrize("values", ["values.yaml", "values-production-example.yaml"])
@pytest.mark.parametrize("text", VERSIONS)
def test_the_charts_speculative_configs_start_on_every_checked_version(values: str, text: str) -> None:
    vllm = yaml.safe_load((CHART / values).read_text())["vllm"]
    config = vllm["speculativeConfig"]
    config = json.loads(config) if isinstance(config, str) else config
    assert config and rejected_keys(config, version(text)) == ()
    # the flag that depends on speculation exists in all three (and its values)
    assert vllm.get("perRequestSpecDecodeMetrics", "summary") in ("", "summary", "detailed")
