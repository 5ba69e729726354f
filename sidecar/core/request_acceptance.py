"""Per-request acceptance from OpenAI-compatible request and response bodies (docs/engines.md#per-request-acceptance).

vLLM started with ``--per-request-spec-decode-metrics`` puts ``metrics.speculative_decoding`` on a JSON
response, and on a stream only on the final usage-only chunk (``"choices":[]``), which it sends only when the
client asked for ``stream_options.include_usage``. The tap may ask for it on the client's behalf; then
:class:`StreamFilter` removes that chunk again and undoes the one other thing asking changes in vLLM 0.32: the
terminal chunk loses its ``system_fingerprint`` (it moves to the usage chunk), so we put it back.

Everything here works on bytes and plain values; the hot path (:meth:`StreamFilter.feed`) does a few C-level
substring scans per network read and parses JSON only for the one usage chunk.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

EVENT_END = b"\n\n"
_USAGE_KEY = b'"usage"'
_USAGE_NULL = b',"usage":null'
_USAGE_OBJECT = (b'"usage":{', b'"usage": {')
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
_TERMINAL = b'"finish_reason":"'
_FINGERPRINT_KEY = b'"system_fingerprint"'
# A stream that never ends an event within this many bytes is not SSE as vLLM writes it: stop holding bytes.
MAX_PENDING_BYTES = 1 << 20

SOURCE_METRICS = "per_request_metrics"
SOURCE_ESTIMATE = "chunk_estimate"
SOURCE_NONE = "none"


@dataclass(frozen=True)
class RequestPlan:
    """What the tap learned from a request body and what it sends upstream instead."""

    attributable: bool  # n == 1, one prompt, valid JSON object: the response's metrics belong to one sequence
    temperature: float | None = None
    stream: bool = False
    model: str | None = None
    asked_usage: bool = False  # the client itself asked for stream_options.include_usage
    injected_usage: bool = False  # we asked for it: the client must not see the usage chunk
    upstream_body: bytes | None = None  # None: send the client's bytes unchanged


NOT_ATTRIBUTABLE = RequestPlan(attributable=False)


def plan_request(body: bytes, *, ask_for_usage: bool) -> RequestPlan:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python's parser goes
        return NOT_ATTRIBUTABLE
    if not isinstance(request, dict) or not _single_sequence(request):
        return NOT_ATTRIBUTABLE
    temperature = _temperature(request.get("temperature"))
    stream = request.get("stream") is True
    model = request.get("model") if isinstance(request.get("model"), str) else None
    options = request.get("stream_options")
    asked = stream and isinstance(options, dict) and options.get("include_usage") is True
    if not stream or asked or not ask_for_usage:
        return RequestPlan(True, temperature, stream, model, asked_usage=asked)
    # include_usage=false makes continuous_usage_stats inert; keep it inert now that include_usage is on.
    request["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    request["stream_options"].pop("continuous_usage_stats", None)
    try:
        upstream = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate (\ud800 escaped in the JSON, or its three raw bytes, which json.loads also takes)
        # has no UTF-8 form. Re-escaping it would change the bytes vLLM gets; sending the client's own bytes
        # without the usage request keeps them exactly as a direct request would have them.
        # The model name, if that is where the surrogate is, would become a label /metrics cannot encode.
        return RequestPlan(True, temperature, stream, model if model is None or _utf8_clean(model) else None)
    return RequestPlan(True, temperature, stream, model, injected_usage=True, upstream_body=upstream)


def _utf8_clean(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _single_sequence(request: dict[str, Any]) -> bool:
    n = request.get("n", 1)
    if n is not None and n != 1:
        return False
    if request.get("use_beam_search") is True:
        return False
    prompt = request.get("prompt")
    # Completions take one prompt as a string or token ids, several as a list of those.
    return not (isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list) and len(prompt) > 1)


def _temperature(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


@dataclass(frozen=True)
class SpecCounts:
    draft_tokens: int
    accepted_tokens: int

    @property
    def ratio(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens > 0 else None


@dataclass(frozen=True)
class ResponseFacts:
    model: str | None = None
    completion_tokens: int | None = None
    spec: SpecCounts | None = None


def facts_from_payload(payload: object) -> ResponseFacts:
    """Model, completion tokens and speculative counts from a response object or a final usage chunk."""
    if not isinstance(payload, dict):
        return ResponseFacts()
    model = payload.get("model")
    usage = payload.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    metrics = payload.get("metrics")
    spec = metrics.get("speculative_decoding") if isinstance(metrics, dict) else None
    return ResponseFacts(
        model if isinstance(model, str) else None,
        tokens if _is_count(tokens) else None,
        _spec_counts(spec),
    )


def facts_from_body(body: bytes) -> ResponseFacts:
    try:
        return facts_from_payload(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return ResponseFacts()


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _spec_counts(spec: object) -> SpecCounts | None:
    if not isinstance(spec, dict):
        return None
    draft, accepted = spec.get("num_draft_tokens"), spec.get("num_accepted_draft_tokens")
    # More accepted than drafted cannot happen; such a response is not attributed rather than counted as a
    # ratio above 1 that would lift its temperature bucket.
    if not _is_count(draft) or not _is_count(accepted) or accepted > draft:
        return None
    return SpecCounts(draft, accepted)


def chunk_estimate(completion_tokens: int, token_events: int, k: int) -> SpecCounts | None:
    """Acceptance guessed from how many tokens each stream chunk carried.

    One chunk is usually one engine step: the prefill step gives 1 token, every later verify step proposes k
    drafts and emits 1 + accepted. So accepted = tokens - chunks, drafts = (chunks - 1)·k. Steps merged under
    load, or chunks held back by the detokenizer, bias this upward: it is labelled an estimate.
    """
    if k <= 0 or token_events <= 1 or completion_tokens < token_events:
        return None
    drafts = (token_events - 1) * k
    return SpecCounts(drafts, min(completion_tokens - token_events, drafts))


def token_events(total_events: int, *, chat: bool, usage_chunk: bool) -> int:
    """Events that carried generated tokens: not [DONE], not the usage chunk, not chat's opening role chunk."""
    return total_events - 1 - (1 if usage_chunk else 0) - (1 if chat else 0)


class StreamFilter:
    """Relays an SSE byte stream, finds the final usage chunk, and strips it when the client did not ask for it.

    ``feed`` returns the bytes to send to the client now. Without stripping those are the bytes given,
    unchanged and at once; with stripping, whole events only (a partial event waits for its end), and the
    terminal chunk waits for the usage chunk that follows it so its system_fingerprint can be restored.
    """

    __slots__ = ("_fingerprint", "_held", "_pending", "_strip", "events", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._pending = b""
        self._held = b""
        self._fingerprint = b""
        self.events = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(EVENT_END)
        if end < 0:
            return self._hold_partial(data, chunk)
        end += 2
        if end == len(data):
            block, self._pending = data, b""
        else:
            block, self._pending = data[:end], data[end:]
        self.events += block.count(EVENT_END)
        if _USAGE_KEY in block:
            if self._strip and _server_forces_usage(block):
                return self._stop_stripping(block)
            block = self._inspect(block)
        if not self._strip:
            return chunk
        return self._release(block)

    def _stop_stripping(self, block: bytes) -> bytes:
        """The server sends usage on every chunk whatever the client asked (``--enable-force-include-usage``):
        the client gets it without the tap too, so nothing may be stripped. Relay all we have not relayed."""
        self._strip = False
        out = self._held + block + self._pending  # the partial event stays pending, for observation only
        self._held = b""
        self._inspect(block)
        return out

    def finish(self) -> bytes:
        """Whatever is still held when the upstream ends (a stream cut short, or one without a usage chunk)."""
        rest = self._held + self._pending if self._strip else b""
        self._held = self._pending = b""
        return rest

    def _hold_partial(self, data: bytes, chunk: bytes) -> bytes:
        if len(data) > MAX_PENDING_BYTES:
            # Not vLLM's SSE: give up stripping rather than buffer an unbounded stream.
            self._pending = data
            out = self.finish() if self._strip else chunk
            self._strip = False
            return out
        self._pending = data
        return b"" if self._strip else chunk

    def _release(self, block: bytes) -> bytes:
        if self.usage is not None:
            out = self._held + block if self._held else block
            if self._fingerprint:
                out, self._fingerprint = _restore_fingerprint(out, self._fingerprint), b""
            self._held = b""
            return out
        if not self._held and _TERMINAL not in block:
            return block
        self._held += block
        return b""

    def _inspect(self, block: bytes) -> bytes:
        if self._strip and _USAGE_NULL in block:
            block = block.replace(_USAGE_NULL, b"")  # older vLLM wrote "usage":null on every chunk
        if not any(marker in block for marker in _EMPTY_CHOICES):
            return block
        kept: list[bytes] = []
        for event in block.split(EVENT_END)[:-1]:
            payload = _usage_chunk(event)
            if payload is None:
                kept.append(event + EVENT_END)
                continue
            self.usage = payload
            if self._strip:
                self._fingerprint = _fingerprint_field(event)
            else:
                kept.append(event + EVENT_END)
        return b"".join(kept)


def _server_forces_usage(block: bytes) -> bool:
    """A chunk that carries choices also carries a usage object: continuous usage the client did not ask for."""
    for event in block.split(EVENT_END):
        if any(m in event for m in _USAGE_OBJECT) and not any(m in event for m in _EMPTY_CHOICES):
            return True
    return False


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    if _USAGE_KEY not in event or not event.startswith(b"data:"):
        return None
    try:
        payload = json.loads(event[5:])
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict) and payload.get("choices") == [] and isinstance(payload.get("usage"), dict):
        return payload
    return None


def _fingerprint_field(usage_event: bytes) -> bytes:
    """The bytes ``,"system_fingerprint":"..."`` exactly as the usage chunk carries them, or b""."""
    start = usage_event.find(b"," + _FINGERPRINT_KEY + b":")
    if start < 0:
        return b""
    end = _json_string_end(usage_event, start + len(_FINGERPRINT_KEY) + 2)
    return usage_event[start:end] if end > 0 else b""


def _restore_fingerprint(held: bytes, field: bytes) -> bytes:
    """Put the usage chunk's system_fingerprint back on the terminal chunk, where vLLM writes it without usage.

    pydantic writes it after ``choices`` (and ``usage``, unset here), which end the terminal chunk: the field
    goes right before the closing brace.
    """
    events = held.split(EVENT_END)
    for i, event in enumerate(events):
        if _TERMINAL in event and _FINGERPRINT_KEY not in event and event.endswith(b"}"):
            events[i] = event[:-1] + field + b"}"
    return EVENT_END.join(events)


def _json_string_end(text: bytes, value_start: int) -> int:
    """Index just past the JSON string starting at value_start (a quote), or -1."""
    if value_start >= len(text) or text[value_start : value_start + 1] != b'"':
        return -1
    i = value_start + 1
    while i < len(text):
        if text[i : i + 1] == b"\\":
            i += 2
            continue
        if text[i : i + 1] == b'"':
            return i + 1
        i += 1
    return -1
