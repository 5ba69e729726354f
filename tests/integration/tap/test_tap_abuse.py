"""The tap under abuse (issue #11): bodies with invalid text, an upstream that drops mid-response, slow clients,
and paths it must not forward. The real `spec-sidecar run` on 127.0.0.1, real upstreams, raw sockets where a
well-behaved client library would not misbehave enough."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.support.replay import free_port
from tests.support.sidecar_process import run_sidecar, wait_until
from tests.support.tap_server import TapServer, tap_server
from tests.support.tap_upstream import MODEL, TapUpstream, running_upstream

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[TapUpstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def tap(upstream: TapUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TapServer]:
    env = {
        "SPEC_SIDECAR_CLIENT_HEADER_TIMEOUT": "1",
        "SPEC_SIDECAR_CLIENT_BODY_TIMEOUT": "1",
        "SPEC_SIDECAR_KEEPALIVE_TIMEOUT": "1",
    }
    with tap_server(tmp_path_factory.mktemp("abuse"), upstream.url, **env) as server:
        yield server


def errors(server: TapServer, reason: str) -> float:
    value = server.value("specdecode_tap_errors_total", reason=reason)
    assert value is not None, f"no specdecode_tap_errors_total{{reason={reason!r}}}"
    return value


# --- invalid text in a body -------------------------------------------------------------------------------


def raw_body(path: str, text: bytes, *, stream: bool) -> bytes:
    """A request body with `text` (JSON string content, already escaped as wanted) as the prompt or message."""
    content = b'"' + text + b'"'
    payload = b'"messages":[{"role":"user","content":' + content + b"}]" if path == CHAT else b'"prompt":' + content
    return b'{"model":"%s","max_tokens":8,"stream":%s,%s}' % (MODEL.encode(), b"true" if stream else b"false", payload)


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "text",
    [b"\\ud800", b"a\\udfff b", b"\xed\xa0\x80", b"\xff\xfe", b"caf\xc3"],
    ids=["escaped-lone-high-surrogate", "escaped-lone-low-surrogate", "raw-surrogate-bytes", "not-utf8", "cut-utf8"],
)
def test_a_body_with_invalid_text_reaches_vllm_as_the_client_sent_it_and_vllms_answer_comes_back(
    upstream: TapUpstream, tap: TapServer, path: str, stream: bool, text: bytes
) -> None:
    content = raw_body(path, text, stream=stream)
    headers = {"content-type": "application/json"}
    logged = len(tap.log())
    direct = httpx.post(upstream.url + path, content=content, headers=headers)
    relayed = httpx.post(tap.url + path, content=content, headers=headers)
    assert upstream.seen.raw_bodies[-1] == content  # the same bytes vLLM would have had directly
    assert relayed.status_code == direct.status_code != 500
    assert relayed.content == direct.content
    assert "Traceback" not in tap.log()[logged:]


def test_a_json_body_nested_deeper_than_pythons_parser_goes_is_forwarded_not_a_500(
    upstream: TapUpstream, tap: TapServer
) -> None:
    content = b'{"model":"%s","prompt":' % MODEL.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"
    relayed = httpx.post(tap.url + COMPLETIONS, content=content)
    assert upstream.seen.raw_bodies[-1] == content
    assert relayed.status_code != 500


# --- an upstream that drops mid-response --------------------------------------------------------------------


class DroppingUpstream:
    """Answers every request with the start of a response, then closes the connection: an SSE stream after two
    events (chunked), or a JSON body of declared length after half of it."""

    def __init__(self) -> None:
        self.port = 0
        self.served = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        body = await reader.readexactly(length)
        # The sidecar's scrapes of /metrics get the same treatment, uncounted.
        self.served += head.startswith((b"POST /v1/", b"GET /version"))
        if b'"stream":true' in body:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(2):
                event = b'data: {"choices":[{"index":0,"text":"%d","finish_reason":null}]}\n\n' % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n")
            writer.write(b'{"id":"cmpl-1","choices":[')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    def __enter__(self) -> DroppingUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_an_upstream_that_drops_mid_response_cuts_the_client_is_counted_and_logged_once_as_a_warning(
    tmp_path: Path,
) -> None:
    requests = [{"model": MODEL, "prompt": "hi", "stream": i % 2 == 0} for i in range(6)]
    with DroppingUpstream() as dropping, tap_server(tmp_path, dropping.url) as server:
        for request in requests:
            # The client sees what a direct client would: a response cut off, not a complete one.
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(server.url + COMPLETIONS, json=request)
        # A path outside /v1/ goes through FastAPI's stack on its way to the tap: the same there.
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(server.url + "/version")
        assert dropping.served == len(requests) + 1
        assert errors(server, "upstream_broke") == len(requests) + 1
        assert httpx.get(server.url + "/healthz").status_code == 200
        log = server.log()
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "upstream broke off its response" in line]
    assert len(warnings) == 1
    assert " WARNING " in warnings[0]


# --- slow clients --------------------------------------------------------------------------------------------


@contextmanager
def raw_connections(url: str, count: int) -> Iterator[list[socket.socket]]:
    host, port = url.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]
    try:
        yield sockets
    finally:
        for s in sockets:
            s.close()


def closed_by_server(s: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `within` seconds, and what it sent before."""
    s.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            data = s.recv(4096)
            if not data:
                return True, received
            received += data
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received
    return False, received


def test_clients_that_trickle_a_request_head_are_cut_off_at_the_header_timeout(tap: TapServer) -> None:
    before = errors(tap, "client_header_timeout")
    with raw_connections(tap.url, 40) as sockets:
        started = time.monotonic()
        for s in sockets:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        # A byte every 0.3 s: each read is recent, but the head as a whole is late.
        while time.monotonic() - started < 1.2:
            for s in sockets:
                with suppress(OSError):
                    s.sendall(b"x")
            # The sidecar keeps answering while they trickle.
            assert httpx.get(tap.url + "/healthz", timeout=2).status_code == 200
            time.sleep(0.3)
        outcomes = [closed_by_server(s, within=3.0) for s in sockets]
        elapsed = time.monotonic() - started
    assert all(closed for closed, _ in outcomes)
    assert all(sent.startswith(b"HTTP/1.1 408 ") for _, sent in outcomes)
    assert elapsed < 4.0
    assert errors(tap, "client_header_timeout") == before + 40


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_header_timeout(tap: TapServer) -> None:
    with raw_connections(tap.url, 20) as sockets:
        started = time.monotonic()
        outcomes = [closed_by_server(s, within=3.0) for s in sockets]
        elapsed = time.monotonic() - started
    assert all(closed for closed, _ in outcomes)
    assert all(sent == b"" for _, sent in outcomes)  # no 408 a client could take for its next request's answer
    assert 0.8 < elapsed < 3.0


def test_a_client_that_stalls_its_body_is_cut_off_at_the_body_timeout_and_vllm_never_sees_it(
    upstream: TapUpstream, tap: TapServer
) -> None:
    seen = len(upstream.seen.raw_bodies)
    before = errors(tap, "client_body_timeout")
    with raw_connections(tap.url, 10) as sockets:
        started = time.monotonic()
        for s in sockets:
            s.sendall(b'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"model":')
        outcomes = [closed_by_server(s, within=3.0) for s in sockets]
        elapsed = time.monotonic() - started
    assert all(closed for closed, _ in outcomes)
    assert elapsed < 3.0
    assert len(upstream.seen.raw_bodies) == seen
    assert errors(tap, "client_body_timeout") == before + 10


def test_a_slow_but_steady_body_and_a_long_silent_response_are_not_cut_off(
    upstream: TapUpstream, tap: TapServer
) -> None:
    content = raw_body(COMPLETIONS, b"hello", stream=True)
    upstream.step_rate = 4.0  # the response takes about 2 s, longer than every client timeout (1 s)
    try:
        with raw_connections(tap.url, 1) as (s,):
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(content))
            for i in range(0, len(content), 10):  # the body over ~2.5 s, 0.5 s between pieces
                s.sendall(content[i : i + 10])
                time.sleep(0.5 if i + 10 < len(content) else 0)
            closed, received = closed_by_server(s, within=6.0)
    finally:
        upstream.step_rate = 0.0
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"0\r\n\r\n")  # the whole stream, to its last chunk
    assert b"data: [DONE]" in received
    assert closed  # then the idle kept-alive connection is closed at the keep-alive timeout (1 s)


# --- paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/reset_prefix_cache"),
        ("POST", "/sleep"),
        ("POST", "/wake_up"),
        ("POST", "/collective_rpc"),
        ("POST", "/start_profile"),
        ("POST", "/scale_elastic_ep"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/pause"),
        ("GET", "/server_info"),
        ("GET", "/openapi.json"),
        ("GET", "/echo/anything"),
    ],
)
def test_paths_outside_the_allow_list_get_a_403_naming_the_setting_and_never_reach_vllm(
    upstream: TapUpstream, tap: TapServer, method: str, path: str
) -> None:
    before = errors(tap, "path_refused")
    response = httpx.request(method, tap.url + path, json={})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == 403
    assert "tap_forward_paths" in error["message"]
    assert "SPEC_SIDECAR_TAP_FORWARD_PATHS" in error["message"]
    assert errors(tap, "path_refused") == before + 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("POST", COMPLETIONS), ("GET", "/health")])
def test_the_openai_api_and_vllms_probes_are_forwarded_by_default(
    upstream: TapUpstream, tap: TapServer, method: str, path: str
) -> None:
    request = {"model": MODEL, "prompt": "hi", "max_tokens": 4} if method == "POST" else None
    direct = httpx.request(method, upstream.url + path, json=request)
    relayed = httpx.request(method, tap.url + path, json=request)
    assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content)


def test_an_operator_can_forward_more_paths_or_every_path(upstream: TapUpstream, tmp_path: Path) -> None:
    with tap_server(tmp_path, upstream.url, SPEC_SIDECAR_TAP_FORWARD_PATHS="openai,/echo/*") as server:
        assert httpx.get(server.url + "/echo/a").json()["path"] == "/echo/a"
        assert httpx.post(server.url + "/sleep").status_code == 403
    with tap_server(tmp_path, upstream.url, SPEC_SIDECAR_TAP_FORWARD_PATHS="*") as server:
        assert httpx.post(server.url + "/sleep").status_code == 404  # the stand-in's answer: forwarded
        assert httpx.get(server.url + "/echo/a").status_code == 200


def test_the_sidecars_own_routes_are_answered_whatever_the_allow_list(upstream: TapUpstream, tap: TapServer) -> None:
    for path in ("/healthz", "/metrics", "/status", "/api/report"):
        assert httpx.get(tap.url + path).status_code == 200, path
    wait_until(lambda: httpx.get(tap.url + "/readyz").status_code == 200, 15)


# --- two listeners --------------------------------------------------------------------------------------------


def test_with_a_metrics_listener_the_api_port_serves_only_the_tap_and_the_metrics_port_forwards_nothing(
    upstream: TapUpstream, tmp_path: Path
) -> None:
    metrics_port = free_port()
    own = f"http://127.0.0.1:{metrics_port}"
    flags = ("--vllm-url", upstream.url, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    with run_sidecar(tmp_path, *flags, health_url=own) as api:
        for path in ("/healthz", "/metrics", "/status", "/api/report"):
            assert httpx.get(own + path).status_code == 200, path
            assert httpx.get(api.url + path).status_code == 403, path  # a path the tap does not forward
        assert b"specdecode_tap_errors_total" in httpx.get(own + "/metrics").content
        request = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
        assert httpx.post(api.url + COMPLETIONS, json=request).status_code == 200
        assert httpx.get(api.url + "/v1/models").json()["data"][0]["id"] == MODEL
        seen = len(upstream.seen.raw_bodies)
        assert httpx.post(own + COMPLETIONS, json=request).status_code == 404
        assert httpx.get(own + "/v1/models").status_code == 404
        assert len(upstream.seen.raw_bodies) == seen
