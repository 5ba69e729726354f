"""The request tap: an OpenAI-compatible pass-through in front of vLLM that records acceptance by temperature.

``install_tap`` mounts one ASGI app behind the sidecar's own routes. Every path and method goes to the upstream
unchanged; ``POST /v1/completions`` and ``POST /v1/chat/completions`` are also observed: the request body gives
the temperature, the response (JSON body, or the stream's final usage chunk) gives ``metrics.speculative_decoding``
(docs/engines.md#per-request-acceptance). What the client receives is what vLLM sent: status, end-to-end headers,
body bytes; streams go out chunk by chunk as they arrive. The only rewrite is the one the tap causes itself:
when it asked for usage on a client's behalf, :class:`~sidecar.core.request_acceptance.StreamFilter` takes the
usage chunk back out.

Errors of the tap's own: 403 (a path ``tap_forward_paths`` does not allow; vLLM's admin routes are not in the
default), 413 (observed body over the cap; other paths stream their bodies and have no cap), 502 (upstream
unreachable or broken before its response started), 504 (upstream timed out before its response started). An
upstream that breaks after its response started gets the client's connection cut, as vLLM's own would be, with
one warning in the log (not one traceback per request). Each is counted in ``specdecode_tap_errors_total``.
A client that disconnects cancels the upstream request (the upstream connection is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import fastapi

from sidecar.core.forward_paths import OPENAI, ForwardPaths, parse_forward_paths
from sidecar.core.request_acceptance import (
    SOURCE_ESTIMATE,
    SOURCE_METRICS,
    SOURCE_NONE,
    RequestPlan,
    ResponseFacts,
    SpecCounts,
    StreamFilter,
    chunk_estimate,
    facts_from_body,
    facts_from_payload,
    plan_request,
    token_events,
)
from sidecar.core.temperature import TemperatureBuckets
from sidecar.tap.recorder import (
    ERROR_BODY_TOO_LARGE,
    ERROR_PATH_REFUSED,
    ERROR_UPSTREAM_BROKE,
    ERROR_UPSTREAM_TIMEOUT,
    ERROR_UPSTREAM_UNREACHABLE,
    RequestRecord,
    TapRecorder,
)
from sidecar.tap.upstream import Timeouts, UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OBSERVED_PATHS = {"/v1/completions": False, "/v1/chat/completions": True}  # path → is chat
# RFC 9110 §7.6.1 hop-by-hop fields, plus the ones each side's HTTP stack sets itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {b"host", b"content-length"}
# uvicorn writes its own date and server headers; forwarding the upstream's would duplicate them.
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server"}


# Pass-through bodies up to this size are read before forwarding (a streamed body needs a fresh connection).
_SMALL_BODY_BYTES = 1 << 20


# An upstream that breaks takes every stream in flight with it: one warning per this many seconds, with a count.
BROKE_WARNING_SECONDS = 60.0


def _unknown_k() -> int | None:
    return None


def _openai_paths() -> ForwardPaths:
    return parse_forward_paths(OPENAI)


@dataclass(frozen=True)
class TapConfig:
    """How the tap forwards and what it records (sidecar/wiring.py maps the settings onto it)."""

    upstream_url: str  # vLLM base URL, e.g. http://127.0.0.1:8000
    max_body_bytes: int = 16 * 1024 * 1024  # cap on observed request bodies (they are buffered to be read)
    temperature_buckets: TemperatureBuckets = field(default_factory=TemperatureBuckets)
    ask_for_usage: bool = True  # add stream_options.include_usage upstream, strip it for the client
    estimate_from_chunks: bool = False  # without per-request metrics, estimate from stream chunk sizes
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float | None = 600.0  # longest silence between upstream bytes (queueing, prefill)
    write_timeout_seconds: float = 60.0
    upstream_idle_seconds: float = 4.0  # reuse an idle upstream connection only this long (under vLLM's 5 s)
    forward_paths: ForwardPaths = field(default_factory=_openai_paths)  # others get a 403
    # Draft tokens per verify step (num_speculative_tokens), needed only by the chunk estimate.
    speculative_tokens: Callable[[], int | None] = _unknown_k


def install_tap(app: fastapi.FastAPI, config: TapConfig, recorder: TapRecorder, *, mount: bool = True) -> Tap:
    """Mount the tap behind every route registered so far (call it last; ``mount=False`` leaves it to the
    caller to route requests to it). Its upstream client is created on first use and closed when the app's
    lifespan ends. Returns the tap, so the app can also hand it the OpenAI API's
    paths directly (see ``sidecar.web.app.SidecarApp``)."""
    tap = Tap(config, recorder)
    app.state.tap = tap
    # The tap ends a response vLLM broke off by raising UpstreamBrokeError (the server then cuts the client's
    # connection); it has logged its own warning, so uvicorn's traceback for it is dropped.
    logging.getLogger("uvicorn.error").addFilter(_QUIET_BREAKS)
    if mount:
        app.mount("/", tap, name="tap")
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        try:
            async with original(asgi_app) as state:
                yield state
        finally:
            await tap.aclose()

    app.router.lifespan_context = lifespan
    return tap


class ClientGoneError(Exception):
    """The client disconnected while we were still reading its request body."""


class UpstreamBrokeError(Exception):
    """vLLM broke off a response the client had started to receive: the only way left to say so is to cut the
    client's connection, which the server does when the app raises. Already logged and counted by the tap."""


class _QuietBreaks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UpstreamBrokeError))


_QUIET_BREAKS = _QuietBreaks()


@dataclass
class _Exchange:
    """One request/response as the tap handles it."""

    scope: Scope
    receive: Receive
    send: Send
    started: float
    plan: RequestPlan | None = None  # None: not observed
    chat: bool = False
    finished: bool = False  # the final body message is going out: a disconnect now is the normal end
    cancelled_by_client: bool = False


class Tap:
    def __init__(self, config: TapConfig, recorder: TapRecorder) -> None:
        self.config = config
        self.recorder = recorder
        self._pool: UpstreamPool | None = None
        self._forward = config.forward_paths
        self._forward_exact = config.forward_paths.exact
        self._broke_warned_at: float | None = None
        self._broke_unwarned = 0

    def pool(self) -> UpstreamPool:
        if self._pool is None:
            timeouts = Timeouts(
                connect=self.config.connect_timeout_seconds,
                read=self.config.read_timeout_seconds,
                write=self.config.write_timeout_seconds,
            )
            self._pool = UpstreamPool(
                self.config.upstream_url, timeouts, idle_seconds=self.config.upstream_idle_seconds
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path not in self._forward_exact and not self._forward.allows_by_prefix(path):
            self.recorder.error(ERROR_PATH_REFUSED)
            message = f"the tap does not forward {path}: allow it with tap_forward_paths ({FORWARD_SETTING})"
            await _error(send, 403, message, "forbidden")
            return
        exchange = _Exchange(scope, receive, send, time.perf_counter())
        chat = OBSERVED_PATHS.get(path)
        if chat is not None and scope["method"] == "POST":
            exchange.chat = chat
            await self._observed(exchange)
        else:
            await self._passthrough(exchange)

    # --- request side -------------------------------------------------------------------------------------

    @staticmethod
    def _target(scope: Scope) -> bytes:
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string") or b""
        return path + b"?" + query if query else path

    async def _observed(self, exchange: _Exchange) -> None:
        headers = _forward_headers(exchange.scope["headers"], _REQUEST_DROP)
        body = await self._read_capped_body(exchange)
        if body is None:
            return
        exchange.plan = plan_request(body, ask_for_usage=self.config.ask_for_usage)
        content = exchange.plan.upstream_body if exchange.plan.upstream_body is not None else body
        headers.append((b"content-length", str(len(content)).encode()))
        await self._until_disconnect(exchange, self._exchange(exchange, headers, content))

    async def _passthrough(self, exchange: _Exchange) -> None:
        raw = exchange.scope["headers"]
        headers = _forward_headers(raw, _REQUEST_DROP)
        length = _header(raw, b"content-length")
        if length is not None:
            headers.append((b"content-length", length))
        if length is None and _header(raw, b"transfer-encoding") is None:
            await self._until_disconnect(exchange, self._exchange(exchange, headers, None))
            return
        if length is not None and length.isdigit() and int(length) <= _SMALL_BODY_BYTES:
            # Small bodies are read first: the request can then go out on a kept-alive connection.
            body = await _read_body(exchange.receive)
            if body is not None:
                await self._until_disconnect(exchange, self._exchange(exchange, headers, body))
            return
        # A streamed body: the client is still sending while we forward, so watch for a disconnect after.
        with contextlib.suppress(ClientGoneError):
            await self._exchange(exchange, headers, _body_stream(exchange.receive), watch_after_open=True)

    async def _read_capped_body(self, exchange: _Exchange) -> bytes | None:
        cap = self.config.max_body_bytes
        declared = _header(exchange.scope["headers"], b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            self.recorder.error(ERROR_BODY_TOO_LARGE)
            await _too_large(exchange.send, cap)
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                self.recorder.error(ERROR_BODY_TOO_LARGE)
                await _too_large(exchange.send, cap)
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    # --- upstream ----------------------------------------------------------------------------------------

    async def _exchange(
        self,
        exchange: _Exchange,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
        *,
        watch_after_open: bool = False,
    ) -> None:
        try:
            response = await self.pool().request(
                exchange.scope["method"], self._target(exchange.scope), headers, content
            )
        except TimeoutError:
            log.warning(
                "tap: %s %s: upstream timed out before answering", exchange.scope["method"], exchange.scope["path"]
            )
            self.recorder.error(ERROR_UPSTREAM_TIMEOUT)
            await _error(exchange.send, 504, "upstream timed out before answering", "gateway_timeout")
            return
        except (UpstreamError, OSError, asyncio.IncompleteReadError) as exc:
            log.warning("tap: %s %s: upstream unreachable: %s", exchange.scope["method"], exchange.scope["path"], exc)
            self.recorder.error(ERROR_UPSTREAM_UNREACHABLE)
            await _error(exchange.send, 502, f"upstream unreachable: {exc}", "bad_gateway")
            return
        try:
            if watch_after_open:
                await self._until_disconnect(exchange, self._respond(exchange, response))
            else:
                await self._respond(exchange, response)
        except (UpstreamError, TimeoutError) as exc:  # only the upstream's reads raise these, never the client's
            self._upstream_broke(exchange, exc)
            raise UpstreamBrokeError(str(exc)) from None
        finally:
            await response.aclose()

    def _upstream_broke(self, exchange: _Exchange, exc: Exception) -> None:
        self.recorder.error(ERROR_UPSTREAM_BROKE)
        now = time.monotonic()
        if self._broke_warned_at is not None and now - self._broke_warned_at < BROKE_WARNING_SECONDS:
            self._broke_unwarned += 1
            return
        more = f" ({self._broke_unwarned} more since the last warning)" if self._broke_unwarned else ""
        log.warning(
            "tap: %s %s: upstream broke off its response, client connection cut: %s%s",
            exchange.scope["method"],
            exchange.scope["path"],
            exc,
            more,
        )
        self._broke_warned_at, self._broke_unwarned = now, 0

    async def _until_disconnect(self, exchange: _Exchange, work: Awaitable[None]) -> None:
        """Run work; if the client disconnects first, cancel it (closing the upstream connection with it)."""
        current = asyncio.current_task()
        assert current is not None
        watcher = asyncio.create_task(_watch_disconnect(exchange, current))
        try:
            await work
        except asyncio.CancelledError:
            if not exchange.cancelled_by_client:
                raise
            current.uncancel()
        finally:
            watcher.cancel()

    # --- response side -----------------------------------------------------------------------------------

    async def _respond(self, exchange: _Exchange, response: UpstreamResponse) -> None:
        plan = exchange.plan
        observe = plan is not None and plan.attributable and response.status == 200
        observe = observe and response.header(b"content-encoding") is None
        is_sse = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        if plan is not None and observe and is_sse and plan.stream:
            await self._relay_stream(exchange, plan, response)
        elif plan is not None and observe and not is_sse and not plan.stream:
            await self._relay_body(exchange, plan, response)
        else:
            await self._relay_plain(exchange, response)

    async def _start(self, exchange: _Exchange, response: UpstreamResponse, *, keep_length: bool = True) -> None:
        drop = _RESPONSE_DROP if keep_length else _RESPONSE_DROP | {b"content-length"}
        headers = _forward_headers(response.headers, drop)
        await exchange.send({"type": "http.response.start", "status": response.status, "headers": headers})

    async def _finish(self, exchange: _Exchange, body: bytes = b"") -> None:
        exchange.finished = True
        await exchange.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_plain(self, exchange: _Exchange, response: UpstreamResponse) -> None:
        await self._start(exchange, response)
        send = exchange.send
        async for chunk in response.chunks():
            if response.last_piece:
                await self._finish(exchange, chunk)
            else:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not exchange.finished:
            await self._finish(exchange)

    async def _relay_body(self, exchange: _Exchange, plan: RequestPlan, response: UpstreamResponse) -> None:
        await self._start(exchange, response)
        send, cap = exchange.send, self.config.max_body_bytes
        parts: list[bytes] = []
        size = 0
        async for chunk in response.chunks():
            if response.last_piece:
                await self._finish(exchange, chunk)
            else:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            size += len(chunk)
            if size <= cap:
                parts.append(chunk)
        if not exchange.finished:
            await self._finish(exchange)
        facts = facts_from_body(b"".join(parts)) if size <= cap else ResponseFacts()
        self._record(exchange, plan, facts, events=None, ttft=None, tpot=None)

    async def _relay_stream(self, exchange: _Exchange, plan: RequestPlan, response: UpstreamResponse) -> None:
        await self._start(exchange, response, keep_length=not plan.injected_usage)
        send = exchange.send
        stream = StreamFilter(strip_usage=plan.injected_usage)
        first: float | None = None
        async for chunk in response.chunks():
            out = stream.feed(chunk)
            if response.last_piece:
                out += stream.finish()
            if out and first is None:
                first = time.perf_counter()
            if response.last_piece:
                await self._finish(exchange, out)
            elif out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        if not exchange.finished:
            await self._finish(exchange, stream.finish())
        end = time.perf_counter()
        facts = facts_from_payload(stream.usage) if stream.usage is not None else ResponseFacts()
        ttft = first - exchange.started if first is not None else None
        tokens = facts.completion_tokens
        tpot = (end - first) / (tokens - 1) if first is not None and tokens is not None and tokens > 1 else None
        self._record(exchange, plan, facts, events=stream.events, ttft=ttft, tpot=tpot)

    def _record(
        self,
        exchange: _Exchange,
        plan: RequestPlan,
        facts: ResponseFacts,
        *,
        events: int | None,
        ttft: float | None,
        tpot: float | None,
    ) -> None:
        spec, source = facts.spec, SOURCE_METRICS
        if spec is None:
            spec, source = self._estimate(exchange, facts, events), SOURCE_ESTIMATE
        if spec is None:
            source = SOURCE_NONE
        self.recorder.record(
            RequestRecord(
                model_name=facts.model or plan.model or "unknown",
                bucket=self.config.temperature_buckets.label_for(plan.temperature),
                source=source,
                spec=spec,
                ttft_seconds=ttft,
                tpot_seconds=tpot,
            )
        )

    def _estimate(self, exchange: _Exchange, facts: ResponseFacts, events: int | None) -> SpecCounts | None:
        if not self.config.estimate_from_chunks or events is None or facts.completion_tokens is None:
            return None
        k = self.config.speculative_tokens()
        if k is None:
            return None
        chunks = token_events(events, chat=exchange.chat, usage_chunk=True)
        return chunk_estimate(facts.completion_tokens, chunks, k)


async def _watch_disconnect(exchange: _Exchange, task: asyncio.Task[Any]) -> None:
    while True:
        message = await exchange.receive()
        if message["type"] == "http.disconnect":
            break
    if not exchange.finished:
        exchange.cancelled_by_client = True
        task.cancel()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left while sending it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _body_stream(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _forward_headers(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    connection = _header(headers, b"connection")
    named = {token.strip().lower() for token in connection.split(b",")} if connection else set()
    return [(k, v) for k, v in headers if k.lower() not in drop and k.lower() not in named]


FORWARD_SETTING = "--tap-forward-paths, SPEC_SIDECAR_TAP_FORWARD_PATHS"


async def _too_large(send: Send, cap: int) -> None:
    await _error(send, 413, f"request body over the tap's {cap}-byte limit", "invalid_request_error")


async def _error(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
