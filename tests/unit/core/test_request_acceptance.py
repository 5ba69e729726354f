from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.request_acceptance import (
    MAX_PENDING_BYTES,
    SpecCounts,
    StreamFilter,
    chunk_estimate,
    facts_from_body,
    facts_from_payload,
    plan_request,
    token_events,
)
from tests.support.tap_upstream import FINGERPRINT, stream_events, synthesize

# A chat stream as vLLM 0.32 writes it (field order of ChatCompletionStreamResponse, compact pydantic JSON).
HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m"'
ROLE = (
    HEAD + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
)
TOKEN = HEAD + b',"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}'
LAST = (
    HEAD + b',"choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]'
)
SPEC = (
    b'{"mean_acceptance_length":2.0,"draft_acceptance_rate":0.25,"acceptance_histogram":[1,0,1,0,0],'
    b'"num_spec_steps":2,"num_accepted_draft_tokens":2,"num_draft_tokens":8,"num_spec_tokens":4}'
)
USAGE = (
    HEAD + b',"choices":[],"usage":{"prompt_tokens":3,"total_tokens":8,"completion_tokens":5},'
    b'"system_fingerprint":"vllm-0.32.0-abc","metrics":{"speculative_decoding":' + SPEC + b"}}"
)


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


WITHOUT_USAGE = sse(ROLE, TOKEN, LAST + b',"system_fingerprint":"vllm-0.32.0-abc"}', b"[DONE]")
WITH_USAGE = sse(ROLE, TOKEN, LAST + b"}", USAGE, b"[DONE]")


def feed_all(stream: StreamFilter, chunks: list[bytes]) -> bytes:
    return b"".join(stream.feed(c) for c in chunks) + stream.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


# --- requests ------------------------------------------------------------------------------------------------


def test_malformed_json_is_not_attributed_and_goes_upstream_unchanged() -> None:
    plan = plan_request(b'{"model": "m", "temperature": 0', ask_for_usage=True)
    assert not plan.attributable
    assert plan.upstream_body is None


@pytest.mark.parametrize(
    "body",
    [
        {"n": 2, "prompt": "x"},
        {"prompt": ["a", "b"]},
        {"prompt": [[1, 2], [3]]},
        {"use_beam_search": True, "prompt": "x"},
        ["not", "an", "object"],
    ],
)
def test_requests_whose_metrics_vllm_does_not_attribute_to_one_sequence_are_not_attributed(body: object) -> None:
    assert not plan_request(json.dumps(body).encode(), ask_for_usage=True).attributable


@pytest.mark.parametrize("prompt", ["one", [1, 2, 3], ["one"]])
def test_a_single_prompt_in_any_form_is_attributed(prompt: object) -> None:
    assert plan_request(json.dumps({"prompt": prompt, "n": 1}).encode(), ask_for_usage=True).attributable


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (0.7, 0.7), ("1.0", 1.0), (None, None)])
def test_the_temperature_is_read_as_a_float_and_an_omitted_one_stays_unknown(
    value: object, expected: float | None
) -> None:
    body = {"prompt": "x"} if value is None else {"prompt": "x", "temperature": value}
    assert plan_request(json.dumps(body).encode(), ask_for_usage=True).temperature == expected


def test_a_stream_without_usage_is_sent_upstream_asking_for_it_with_everything_else_kept() -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "é"}], "temperature": 0.25}
    body["stream_options"] = {"continuous_usage_stats": True}
    plan = plan_request(json.dumps(body).encode(), ask_for_usage=True)
    assert plan.injected_usage and not plan.asked_usage
    assert plan.upstream_body is not None
    sent = json.loads(plan.upstream_body)
    # continuous_usage_stats was inert without include_usage; it must stay inert, or every chunk changes.
    assert sent == {**body, "stream_options": {"include_usage": True}}


def test_a_stream_whose_client_asked_for_usage_is_forwarded_unchanged() -> None:
    body = json.dumps({"stream": True, "prompt": "x", "stream_options": {"include_usage": True}}).encode()
    plan = plan_request(body, ask_for_usage=True)
    assert plan.asked_usage and not plan.injected_usage and plan.upstream_body is None


def test_nothing_is_injected_when_asking_for_usage_is_turned_off_or_the_request_does_not_stream() -> None:
    streaming = json.dumps({"stream": True, "prompt": "x"}).encode()
    assert plan_request(streaming, ask_for_usage=False).upstream_body is None
    assert plan_request(json.dumps({"prompt": "x"}).encode(), ask_for_usage=True).upstream_body is None


@pytest.mark.parametrize("text", [b"\\ud800", b"\\udfff", b"\xed\xa0\x80"])
@pytest.mark.parametrize("where", ["prompt", "model"])
def test_a_stream_with_a_lone_surrogate_goes_upstream_unchanged_without_asking_for_usage(
    text: bytes, where: str
) -> None:
    other = "prompt" if where == "model" else "model"
    body = b'{"stream":true,"%s":"a%sb","%s":"m"}' % (where.encode(), text, other.encode())
    plan = plan_request(body, ask_for_usage=True)
    assert plan.attributable and plan.stream
    assert plan.upstream_body is None and not plan.injected_usage
    assert plan.model == (None if where == "model" else "m")  # never a label /metrics could not encode


@given(st.text(max_size=40), st.booleans())
def test_any_text_in_a_request_gives_a_plan_whose_upstream_body_is_valid_utf8(text: str, stream: bool) -> None:
    body = json.dumps({"stream": stream, "prompt": text, "model": text}).encode("utf-8", "surrogatepass")
    plan = plan_request(body, ask_for_usage=True)
    if plan.upstream_body is not None:
        assert json.loads(plan.upstream_body.decode("utf-8"))["prompt"] == text
    if plan.model is not None:
        plan.model.encode("utf-8")


def test_json_nested_deeper_than_the_parser_goes_is_not_attributed_rather_than_an_error() -> None:
    assert not plan_request(b"[" * 100_000 + b"]" * 100_000, ask_for_usage=True).attributable


# --- responses -----------------------------------------------------------------------------------------------


def test_facts_come_from_the_speculative_decoding_object_of_a_json_response() -> None:
    body = (
        b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"served","choices":[],'
        b'"usage":{"prompt_tokens":3,"total_tokens":8,"completion_tokens":5},"metrics":{"speculative_decoding":'
        + SPEC
        + b"}}"
    )
    facts = facts_from_body(body)
    assert facts.model == "served"
    assert facts.completion_tokens == 5
    assert facts.spec == SpecCounts(draft_tokens=8, accepted_tokens=2)
    assert facts.spec.ratio == 0.25


def test_a_response_without_per_request_metrics_has_no_spec_counts() -> None:
    facts = facts_from_payload({"model": "m", "usage": {"completion_tokens": 4}, "metrics": None})
    assert facts.spec is None and facts.completion_tokens == 4


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"metrics":{"speculative_decoding":{"num_draft_tokens":-1}}}'])
def test_unusable_response_bodies_give_no_facts_rather_than_an_error(body: bytes) -> None:
    assert facts_from_body(body).spec is None


def test_a_response_claiming_more_accepted_than_drafted_tokens_has_no_spec_counts() -> None:
    spec = {"num_draft_tokens": 4, "num_accepted_draft_tokens": 5}
    assert facts_from_payload({"metrics": {"speculative_decoding": spec}}).spec is None
    spec_ok = {"num_draft_tokens": 5, "num_accepted_draft_tokens": 5}
    assert facts_from_payload({"metrics": {"speculative_decoding": spec_ok}}).spec == SpecCounts(5, 5)


def test_zero_drafts_has_no_ratio_rather_than_a_zero_ratio() -> None:
    assert SpecCounts(0, 0).ratio is None


# --- streams -------------------------------------------------------------------------------------------------


def test_stripping_the_usage_we_asked_for_gives_the_client_exactly_the_stream_it_would_have_had() -> None:
    stream = StreamFilter(strip_usage=True)
    assert feed_all(stream, [WITH_USAGE]) == WITHOUT_USAGE
    assert stream.usage is not None
    assert facts_from_payload(stream.usage).spec == SpecCounts(8, 2)


def test_without_stripping_every_byte_is_relayed_as_it_arrives_and_the_usage_chunk_is_still_read() -> None:
    stream = StreamFilter(strip_usage=False)
    chunks = split_at(WITH_USAGE, [7, 100, 101, 380, 381, 382])
    assert [stream.feed(c) for c in chunks] == chunks
    assert stream.finish() == b""
    assert facts_from_payload(stream.usage).completion_tokens == 5


@settings(max_examples=200)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(WITH_USAGE) - 1), max_size=12))
def test_stripping_is_exact_however_the_network_splits_the_stream(cuts: list[int]) -> None:
    stream = StreamFilter(strip_usage=True)
    assert feed_all(stream, split_at(WITH_USAGE, cuts)) == WITHOUT_USAGE
    assert stream.events == 5


@settings(max_examples=50)
@given(
    chat=st.booleans(),
    max_tokens=st.integers(min_value=1, max_value=40),
    temperature=st.sampled_from([0, 0.5, 1.0]),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=8),
)
def test_stripping_matches_the_replay_engines_own_rendering_without_usage(
    chat: bool, max_tokens: int, temperature: float, cuts: list[int]
) -> None:
    x = synthesize({"max_tokens": max_tokens, "temperature": temperature}, chat=chat)
    with_usage = b"".join(stream_events(x, include_usage=True))
    without = b"".join(stream_events(x, include_usage=False))
    assert FINGERPRINT.encode() in without
    stream = StreamFilter(strip_usage=True)
    assert feed_all(stream, split_at(with_usage, cuts)) == without


def test_the_terminal_chunk_waits_for_the_usage_chunk_and_nothing_else_does() -> None:
    stream = StreamFilter(strip_usage=True)
    assert stream.feed(sse(ROLE)) == sse(ROLE)
    assert stream.feed(sse(LAST + b"}")) == b""
    assert stream.feed(sse(USAGE)) == sse(LAST + b',"system_fingerprint":"vllm-0.32.0-abc"}')
    assert stream.feed(sse(b"[DONE]")) == sse(b"[DONE]")


def test_a_stream_cut_short_releases_what_it_held_unchanged() -> None:
    stream = StreamFilter(strip_usage=True)
    held = sse(TOKEN, LAST + b"}")
    assert stream.feed(held + b"data: {partial") == b""
    assert stream.finish() == held + b"data: {partial"
    assert stream.usage is None


def test_old_vllm_usage_null_fields_are_removed_when_we_asked_for_usage() -> None:
    stream = StreamFilter(strip_usage=True)
    chunk = HEAD + b',"choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":null}]'
    assert stream.feed(sse(chunk + b',"usage":null}')) == sse(chunk + b"}")


def test_a_stream_that_never_ends_an_event_is_not_buffered_without_bound() -> None:
    stream = StreamFilter(strip_usage=True)
    blob = b"x" * (MAX_PENDING_BYTES // 2)
    assert stream.feed(blob) == b""
    released = stream.feed(blob + b"yy")
    assert released == blob + blob + b"yy"
    assert stream.feed(b"more") == b"more"


def test_a_usage_looking_string_inside_generated_text_is_not_taken_for_the_usage_chunk() -> None:
    text = HEAD + b',"choices":[{"index":0,"text":"\\"usage\\":{} \\"choices\\":[]","finish_reason":null}]}'
    stream = StreamFilter(strip_usage=True)
    assert stream.feed(sse(text)) == sse(text)
    assert stream.usage is None


# --- the chunk estimate ----------------------------------------------------------------------------------------


def test_chunk_estimate_counts_one_prefill_token_then_one_plus_accepted_per_verify_step() -> None:
    # steps of 1 (prefill), 3, 1, 5 tokens with k = 4: 3 verify steps, 12 drafts, 2 + 0 + 4 accepted.
    assert chunk_estimate(completion_tokens=10, token_events=4, k=4) == SpecCounts(12, 6)


@pytest.mark.parametrize(("tokens", "events", "k"), [(5, 1, 4), (3, 5, 4), (10, 4, 0)])
def test_chunk_estimate_gives_nothing_when_the_numbers_cannot_describe_speculation(
    tokens: int, events: int, k: int
) -> None:
    assert chunk_estimate(tokens, events, k) is None


def test_token_events_leave_out_done_the_usage_chunk_and_chats_opening_role_chunk() -> None:
    assert token_events(7, chat=True, usage_chunk=True) == 4
    assert token_events(7, chat=False, usage_chunk=False) == 6


def test_the_chunk_estimate_recovers_the_replay_engines_exact_acceptance() -> None:
    x = synthesize({"max_tokens": 30, "temperature": 0}, chat=True)
    stream = StreamFilter(strip_usage=False)
    feed_all(stream, stream_events(x, include_usage=True))
    facts = facts_from_payload(stream.usage)
    assert facts.completion_tokens is not None and facts.spec is not None
    events = token_events(stream.events, chat=True, usage_chunk=True)
    # The replay emits exactly one event per engine step and never truncates a step's drafts (max_tokens cuts
    # the accepted count, which the engine also reports), so the estimate's accepted count is exact here.
    estimate = chunk_estimate(facts.completion_tokens, events, 4)
    assert estimate is not None
    assert estimate.accepted_tokens == facts.spec.accepted_tokens
    assert estimate.draft_tokens == facts.spec.draft_tokens


def test_a_server_that_forces_usage_on_every_chunk_keeps_it_because_the_client_would_get_it_anyway() -> None:
    usage = b',"usage":{"prompt_tokens":3,"total_tokens":4,"completion_tokens":1}}'
    forced = sse(ROLE[:-1] + usage, TOKEN[:-1] + usage, LAST + usage, USAGE, b"[DONE]")
    for cuts in ([], [10], [len(sse(ROLE[:-1] + usage)) + 5, 600]):
        stream = StreamFilter(strip_usage=True)
        assert feed_all(stream, split_at(forced, cuts)) == forced
        assert facts_from_payload(stream.usage).spec == SpecCounts(8, 2)
