"""`spec-sidecar probe` as a real process against a small OpenAI-compatible server over real HTTP.

The server (tests/support/fake_vllm.py) streams completions the way vLLM 0.32 with
``--per-request-spec-decode-metrics summary`` does, and its /metrics counters advance by exactly the draft and
accepted tokens of each request. So the per-request path and the /metrics-delta fallback (per-request metrics
switched off) must give the same numbers, and both must equal what the server itself counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_vllm import FakeVllm, fake_vllm
from tests.support.replay import free_port
from tests.support.tap_upstream import MODEL

KEYS = {
    "temperature",
    "requests",
    "draft_tokens",
    "accepted_tokens",
    "acceptance_ratio",
    "ttft_seconds",
    "tpot_seconds",
    "verdict",
}


@pytest.fixture(params=[True, False], ids=["per-request", "metrics-delta"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeVllm]:
    with fake_vllm(per_request_metrics=request.param) as server:
        yield server


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "probe", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_json_gives_per_temperature_acceptance_equal_to_what_the_engine_counted(fake: FakeVllm) -> None:
    done = probe("--url", fake.url, "--temperatures", "0,1.0", "--requests", "12", "--concurrency", "3",
                 "--max-tokens", "48", "--min-draft-tokens", "100", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["temperatures"]
    assert [set(r) for r in rows] == [KEYS, KEYS]
    assert [r["temperature"] for r in rows] == [0.0, 1.0]
    for row in rows:
        draft, accepted, n = fake.by_temperature[row["temperature"]]
        assert (row["requests"], row["draft_tokens"], row["accepted_tokens"]) == (12, draft, accepted)
        assert n == 12
        assert row["acceptance_ratio"] == pytest.approx(accepted / draft)
        assert row["ttft_seconds"] is not None and row["ttft_seconds"] >= 0
        assert row["tpot_seconds"] is not None and row["tpot_seconds"] >= 0
    # The server's draft is better at temperature 0 than above; the operating rule on its own counts gives the verdicts.
    assert rows[0]["acceptance_ratio"] > rows[1]["acceptance_ratio"]
    assert [r["verdict"] for r in rows] == [seed_rule(*fake.by_temperature[t][:2]) for t in (0.0, 1.0)]


def seed_rule(draft: int, accepted: int) -> str:
    ratio = accepted / draft
    return "keep" if ratio >= 0.65 else "borderline" if ratio >= 0.5 else "disable"


def test_requests_ask_for_streamed_usage_at_each_temperature_with_the_discovered_model(fake: FakeVllm) -> None:
    done = probe("--url", fake.url + "/v1", "--temperatures", "0.4", "--requests", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert len(fake.bodies) == 3
    for body in fake.bodies:
        assert body["model"] == MODEL and body["temperature"] == 0.4 and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}


def test_prompts_come_from_the_prompt_file_one_per_line(fake: FakeVllm, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    done = probe("--url", fake.url, "--temperatures", "0", "--requests", "4", "--concurrency", "1",
                 "--prompt-file", str(prompt_file), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(b["prompt"] for b in fake.bodies) == [
        "first prompt",
        "first prompt",
        "second prompt",
        "second prompt",
    ]


def test_table_output_shows_each_temperature_verdict_and_source(fake: FakeVllm) -> None:
    done = probe("--url", fake.url, "--temperatures", "0,1", "--requests", "6", "--min-draft-tokens", "50")
    assert done.returncode == 0, done.stderr
    assert [seed_rule(*fake.by_temperature[t][:2]) in done.stdout for t in (0.0, 1.0)] == [True, True]
    source = "per-request" if fake.per_request_metrics else "metrics-delta"
    assert f"acceptance source: {source}" in " ".join(done.stdout.split())
    assert "\x1b[" not in done.stderr  # no progress bar when stderr is not a terminal


def test_unknown_model_is_one_clear_line_and_exit_code_2() -> None:
    with fake_vllm() as state:
        done = probe("--url", state.url, "--model", "nope", "--requests", "1", "--temperatures", "0")
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0
        assert "HTTP 404" in done.stderr and "does not exist" in done.stderr


def test_unreachable_engine_is_one_clear_line_and_exit_code_2() -> None:
    done = probe("--url", f"http://127.0.0.1:{free_port()}", "--requests", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("spec-sidecar probe: cannot reach")
    assert done.stderr.strip().count("\n") == 0


def test_bad_temperatures_are_a_usage_error() -> None:
    done = probe("--url", "http://127.0.0.1:1", "--temperatures", "0,hot")
    assert done.returncode == 2
    assert "temperatures" in done.stderr
