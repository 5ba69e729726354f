"""A stand-in vLLM OpenAI server for the tap's tests and benchmark: real HTTP/1.1 on 127.0.0.1, exact bytes.

It answers /v1/completions and /v1/chat/completions the way vLLM 0.32 started with
``--per-request-spec-decode-metrics summary`` does (docs/engines.md#per-request-acceptance), from responses recorded
off a real vLLM-CPU (tests/fixtures/vllm/) when present, else from synthesized ones with the same shape:
- a stream is ``data: <json>\\n\\n`` events paced at a fixed step rate, then ``data: [DONE]\\n\\n``;
- with ``stream_options.include_usage`` a final usage-only chunk (``"choices":[]``) carries usage, the
  system_fingerprint and ``metrics.speculative_decoding``; without it the terminal chunk carries the fingerprint;
- each token event is one engine step: 1 token from prefill, then 1 + accepted drafts per verify step.
It also records what it saw (request bodies, streams cut short by the client) so tests can check the upstream side.

Other paths: ``/echo/...`` returns the request as JSON; ``/status/NNN`` answers with that status. A request whose
``model`` is ``fail-400``/``fail-500`` gets that error. ``python -m tests.support.tap_upstream --port P`` serves
it standalone (the benchmark runs it in its own process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINGERPRINT = "vllm-0.32.0-5f8c2a1e"
MODEL = "tiny-llama"
K = 4
_TIMINGS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("timings", default=None)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
WORDS = ("the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " it", " slept", ".", " é", " 猫", ' "q"')


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    cut_short: int = 0  # streams (or waits) the client abandoned before the end
    completed: int = 0


@dataclass(frozen=True)
class Exchange:
    """One generation, ready to render in any of the forms a client can ask for."""

    chat: bool
    rid: str
    created: int
    steps: tuple[int, ...]  # tokens per engine step (first is the prefill token)
    words: tuple[str, ...]
    prompt_tokens: int
    spec: dict[str, Any] | None


def synthesize(request: dict[str, Any], *, chat: bool, per_request_metrics: bool = True) -> Exchange:
    """A deterministic generation: acceptance is high at temperature 0 and low above, like a noisy draft."""
    # How the client asked to receive it (stream, usage) must not change what is generated.
    what = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    seed = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    rng = random.Random(seed)
    max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
    temperature = request.get("temperature")
    p_accept = 0.8 if temperature == 0 else 0.3
    steps = [1]
    histogram = [0] * (K + 1)
    while sum(steps) < max_tokens:
        accepted = 0
        while accepted < K and rng.random() < p_accept:
            accepted += 1
        accepted = min(accepted, max_tokens - sum(steps) - 1)
        histogram[accepted] += 1
        steps.append(1 + accepted)
    words = tuple(WORDS[rng.randrange(len(WORDS))] for _ in range(max_tokens))
    spec = None
    if per_request_metrics:
        num_steps = sum(histogram)
        accepted_total = sum(j * c for j, c in enumerate(histogram))
        spec = {
            "mean_acceptance_length": 1.0 + accepted_total / num_steps if num_steps else 1.0,
            "draft_acceptance_rate": accepted_total / (num_steps * K) if num_steps else 0.0,
            "acceptance_histogram": histogram,
            "num_spec_steps": num_steps,
            "num_accepted_draft_tokens": accepted_total,
            "num_draft_tokens": num_steps * K,
            "num_spec_tokens": K,
        }
    rid = ("chatcmpl-" if chat else "cmpl-") + seed[:32]
    return Exchange(chat, rid, 1763800000, tuple(steps), words, 7, spec)


def _dump(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _usage(x: Exchange) -> dict[str, int]:
    n = sum(x.steps)
    return {"prompt_tokens": x.prompt_tokens, "total_tokens": x.prompt_tokens + n, "completion_tokens": n}


def stream_events(x: Exchange, *, include_usage: bool) -> list[bytes]:
    """The SSE events of a stream, each ``data: ...\\n\\n``, in vLLM 0.32's field order."""
    head: dict[str, Any] = {"id": x.rid, "object": "chat.completion.chunk" if x.chat else "text_completion"}
    head |= {"created": x.created, "model": MODEL}
    events: list[bytes] = []
    if x.chat:
        opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        events.append(_dump({**head, "choices": [opening]}))
    position = 0
    for i, size in enumerate(x.steps):
        text = "".join(x.words[position : position + size])
        position += size
        last = i == len(x.steps) - 1
        if x.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = "length" if last else None
        if last:
            choice["stop_reason"] = None
        chunk: dict[str, Any] = {**head, "choices": [choice]}
        if last and not include_usage:
            chunk["system_fingerprint"] = FINGERPRINT
        events.append(_dump(chunk))
    if include_usage:
        final: dict[str, Any] = {**head, "choices": [], "usage": _usage(x), "system_fingerprint": FINGERPRINT}
        if x.spec is not None:
            final["metrics"] = {"speculative_decoding": x.spec}
        events.append(_dump(final))
    events.append(b"[DONE]")
    return [b"data: " + e + b"\n\n" for e in events]


def json_body(x: Exchange) -> bytes:
    text = "".join(x.words)
    if x.chat:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "tool_calls": []}
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    choice["stop_reason"] = None
    body: dict[str, Any] = {"id": x.rid, "object": "chat.completion" if x.chat else "text_completion"}
    body |= {"created": x.created, "model": MODEL, "choices": [choice], "system_fingerprint": FINGERPRINT}
    body["usage"] = _usage(x)
    if x.spec is not None:
        body["metrics"] = {"speculative_decoding": x.spec}
    return _dump(body)


RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "vllm" / "responses" / "draft_model"
RECORDED_ID = b"cmpl-recorded"
RECORDED_CREATED = b"1763800000"


@dataclass(frozen=True)
class Recorded:
    """Real vLLM responses (greedy, same prompt), with id and created made equal across the captures so the
    with-usage and without-usage streams of one kind differ only where vLLM makes them differ."""

    streams: dict[tuple[bool, bool], list[bytes]]  # (chat, include_usage) → SSE events
    bodies: dict[bool, bytes]  # chat → JSON body


def _same_identity(raw: bytes) -> bytes:
    raw = re.sub(rb'"id":"[^"]*"', b'"id":"' + RECORDED_ID + b'"', raw)
    return re.sub(rb'"created":\d+', b'"created":' + RECORDED_CREATED, raw)


def load_recorded(directory: Path = RECORDED) -> Recorded | None:
    names = {(True, True): "chat_stream_usage.sse", (True, False): "chat_stream.sse"}
    names |= {(False, True): "completion_stream_usage.sse", (False, False): "completion_stream.sse"}
    if not all((directory / n).is_file() for n in [*names.values(), "chat.json", "completion.json"]):
        return None
    streams = {}
    for key, name in names.items():
        raw = _same_identity((directory / name).read_bytes())
        streams[key] = [event + b"\n\n" for event in raw.split(b"\n\n") if event]
    bodies = {chat: _same_identity((directory / f"{name}.json").read_bytes()) for chat, name in
              ((True, "chat"), (False, "completion"))}  # fmt: skip
    return Recorded(streams, bodies)


FROM_MAX_TOKENS = -1  # recorded_steps: each stream as long as its request's max_tokens


class TapUpstream:
    """The server. ``step_rate`` paces streams: events (engine steps of 1 + accepted tokens) per second per
    stream; 0 means no pacing. With ``recorded``, every generation request gets the real vLLM response of its
    kind (chat or not, stream or not, usage or not) instead of a synthesized one."""

    def __init__(
        self,
        step_rate: float = 0.0,
        per_request_metrics: bool = True,
        non_stream_delay: float = 0.0,
        recorded: Recorded | None = None,
        recorded_steps: int = 0,
    ):
        self.recorded = recorded
        # Stretch recorded streams to this many token events (0: as captured; FROM_MAX_TOKENS: the request's
        # max_tokens, so that streams differ in length as real ones do).
        self.recorded_steps = recorded_steps
        self.step_rate = step_rate
        self.per_request_metrics = per_request_metrics
        self.non_stream_delay = non_stream_delay
        self.seen = Seen()
        # For the benchmark: per x-bench-id header, when the request was in and when each event the client will
        # see went out (time.monotonic, comparable across processes); GET /bench-log returns and clears it.
        self.timings: dict[str, list[float]] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        h = dict(headers)
        if "content-length" in h:
            body = await reader.readexactly(int(h["content-length"]))
        elif h.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = b""
        path, _, query = target.partition("?")
        timings = self.timings.setdefault(h["x-bench-id"], []) if "x-bench-id" in h else None
        if timings is not None:
            timings.append(time.monotonic())  # the request is in
        _TIMINGS.set(timings)
        if path == "/bench-log":
            log, self.timings = self.timings, {}
            await _respond(writer, 200, _dump(log))
        elif path.startswith("/echo"):
            echo = {"method": method, "path": path, "query": query, "headers": headers, "body": body.decode("latin-1")}
            await _respond(writer, 200, _dump(echo), extra=[("x-replay", "echo"), ("keep-alive", "timeout=5")])
        elif path.startswith("/status/"):
            await _respond(writer, int(path.rsplit("/", 1)[1]), b'{"detail":"as asked"}')
        elif path == "/metrics":
            await _respond(writer, 200, _engine_metrics(), content_type="text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models" and method == "GET":
            await _respond(writer, 200, _dump({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            await self._generate(reader, writer, body, chat=path.endswith("chat/completions"))
        else:
            await _respond(writer, 404, b'{"detail":"Not Found"}')
        return True

    async def _generate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, *, chat: bool
    ) -> None:
        self.seen.raw_bodies.append(body)
        try:
            request = json.loads(body)
        except ValueError:
            await _respond(writer, 400, _error("Invalid JSON body", 400))
            return
        self.seen.requests.append(request)
        model = request.get("model")
        if model in ("fail-400", "fail-500"):
            status = int(model[-3:])
            await _respond(writer, status, _error(f"replayed {status}", status))
            return
        if self.recorded is not None:
            await self._replay(reader, writer, request, chat=chat)
            return
        x = synthesize(request, chat=chat, per_request_metrics=self.per_request_metrics)
        if not request.get("stream"):
            if self.non_stream_delay and await _client_left(reader, self.non_stream_delay):
                self.seen.cut_short += 1
                return
            await _respond(writer, 200, json_body(x))
            self.seen.completed += 1
            return
        options = request.get("stream_options") or {}
        events = stream_events(x, include_usage=bool(options.get("include_usage")))
        # Like vLLM: the chat role chunk rides with the first token; each later step takes one step time; the
        # usage chunk and [DONE] follow the last step at once.
        first_step = 1 if chat else 0
        paced = range(first_step + 1, first_step + len(x.steps))
        await self._stream(reader, writer, events, paced)

    async def _replay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any], *, chat: bool
    ) -> None:
        assert self.recorded is not None
        if not request.get("stream"):
            await _respond(writer, 200, self.recorded.bodies[chat])
            self.seen.completed += 1
            return
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = self.recorded.streams[(chat, usage)]
        # Token events: all but chat's role chunk, the usage chunk and [DONE]; the first rides with the prefill.
        first_step = 1 if chat else 0
        last_step = len(events) - (2 if usage else 1)  # the terminal chunk (finish_reason) is events[last_step - 1]
        steps = self.recorded_steps
        if steps == FROM_MAX_TOKENS:
            steps = int(request.get("max_tokens") or 0)
        if steps > last_step - first_step:
            # Longer streams from real bytes: the middle token events again, in order, before the terminal one.
            middle = events[first_step + 1 : last_step - 1] or events[first_step : first_step + 1]
            extra = steps - (last_step - first_step)
            filler = [middle[i % len(middle)] for i in range(extra)]
            events = events[: last_step - 1] + filler + events[last_step - 1 :]
            last_step += extra
        await self._stream(reader, writer, events, range(first_step + 1, last_step))

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, events: list[bytes], paced: range
    ) -> None:
        writer.write(SSE_HEAD)
        gone = asyncio.ensure_future(reader.read(1))  # EOF here means the client closed the connection
        pause = 1.0 / self.step_rate if self.step_rate else 0.0
        try:
            for i, event in enumerate(events):
                if pause and i in paced:
                    await asyncio.sleep(pause)
                if gone.done():
                    self.seen.cut_short += 1
                    return
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                if (timings := _TIMINGS.get()) is not None and b'"choices":[]' not in event:
                    timings.append(time.monotonic())  # an event the client will see went out
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.seen.completed += 1
        except ConnectionError:
            self.seen.cut_short += 1
            raise
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


async def _client_left(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _error(message: str, code: int) -> bytes:
    return _dump({"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}})


def _engine_metrics() -> bytes:
    """vLLM V1 speculative-decoding counters (k = K positions), so a sidecar scraping us learns k."""
    labels = f'engine="0",model_name="{MODEL}"'
    lines = [
        f"vllm:spec_decode_num_drafts_total{{{labels}}} 100.0",
        f"vllm:spec_decode_num_draft_tokens_total{{{labels}}} {100.0 * K}",
        f"vllm:spec_decode_num_accepted_tokens_total{{{labels}}} 150.0",
    ]
    lines += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{labels},position="{i}"}} 10.0' for i in range(K)]
    return ("\n".join(lines) + "\n").encode()


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> None:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in extra or []]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


@contextmanager
def running_upstream(**kwargs: Any) -> Iterator[TapUpstream]:
    """The server on its own event loop in a thread, for synchronous tests."""
    upstream = TapUpstream(**kwargs)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(upstream.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(upstream.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-rate", type=float, default=0.0)
    parser.add_argument("--recorded", action="store_true", help="serve the real captures in tests/fixtures/vllm")
    parser.add_argument(
        "--recorded-steps",
        type=int,
        default=0,
        help=f"stretch recorded streams to N token events ({FROM_MAX_TOKENS}: to each request's max_tokens)",
    )
    args = parser.parse_args()
    recorded = load_recorded() if args.recorded else None
    if args.recorded and recorded is None:
        parser.error(f"no captured responses under {RECORDED}")

    async def serve() -> None:
        upstream = TapUpstream(step_rate=args.step_rate, recorded=recorded, recorded_steps=args.recorded_steps)
        await upstream.start(args.port)
        print(upstream.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
