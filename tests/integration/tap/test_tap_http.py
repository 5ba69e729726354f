"""The tap's HTTP/1.1 upstream client (sidecar/tap/upstream.py) against scripted raw servers on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.tap.upstream import Timeouts, UpstreamError, UpstreamPool, _complete_chunks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chunked(parts: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n" + trailers + b"\r\n"


@settings(max_examples=300)
@given(
    parts=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    trailers=st.sampled_from([b"", b"x-t: 1\r\n"]),
)
def test_chunked_bodies_decode_the_same_however_the_bytes_arrive(
    parts: list[bytes], cuts: list[int], trailers: bytes
) -> None:
    wire = chunked(parts, trailers)
    points = sorted({min(c, len(wire)) for c in cuts} | {len(wire)})
    buffer, decoded, done, start = b"", [], False, 0
    for point in points:
        buffer += wire[start:point]
        start = point
        out, consumed, done = _complete_chunks(buffer)
        decoded.append(out)
        if done:
            break
        buffer = buffer[consumed:]
    assert done
    assert b"".join(decoded) == b"".join(parts)


def test_a_bad_chunk_size_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        _complete_chunks(b"zz\r\nabc\r\n")


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def body_of(pool: UpstreamPool, method: str = "GET", target: bytes = b"/") -> tuple[int, bytes]:
    response = await pool.request(method, target, [], None)
    try:
        return response.status, b"".join([c async for c in response.chunks()])
    finally:
        await response.aclose()


def test_keep_alive_connections_are_reused_and_a_closed_one_is_retried_transparently() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        # Answers two requests, then closes without a word, as a server ending an idle keep-alive would.
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def scenario() -> list[tuple[int, bytes]]:
        server, url = await serve(handler)
        pool = UpstreamPool(url)
        try:
            results = [await body_of(pool) for _ in range(2)]
            await asyncio.sleep(0.05)  # the server has closed the kept-alive connection by now
            results.append(await body_of(pool))
            return results
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(scenario()) == [(200, b"ok")] * 3
    assert connections == 2


@pytest.mark.parametrize(
    ("method", "response", "body"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
        ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked([b"he", b"llo"]), b"hello"),
        ("GET", b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close"),
        ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", b""),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx", b"x"),
    ],
)
def test_every_body_framing_is_read_to_its_end(method: str, response: bytes, body: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        if response.startswith(b"HTTP/1.0"):
            writer.close()
        else:
            await reader.read()  # hold the connection open; the client decides

    async def scenario() -> tuple[int, bytes]:
        server, url = await serve(handler)
        pool = UpstreamPool(url)
        try:
            return await body_of(pool, method)
        finally:
            await pool.aclose()
            server.close()

    status, got = asyncio.run(scenario())
    assert got == body
    assert status in (200, 201, 204)


def test_a_silent_upstream_times_out_and_an_absent_one_is_an_upstream_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def scenario() -> None:
        server, url = await serve(handler)
        pool = UpstreamPool(url, Timeouts(connect=1, read=0.2, write=1))
        try:
            with pytest.raises(TimeoutError):
                await body_of(pool)
        finally:
            server.close()
            await server.wait_closed()
        with pytest.raises(UpstreamError):
            await body_of(UpstreamPool(url))

    asyncio.run(scenario())


def test_a_streamed_request_body_without_length_is_sent_chunked_and_with_length_as_is() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head:
            raw = await reader.readuntil(b"0\r\n\r\n")
        else:
            raw = await reader.readexactly(6)
        seen.append(head + raw)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async def scenario() -> None:
        server, url = await serve(handler)
        pool = UpstreamPool(url + "/prefix")
        try:
            for headers in ([], [(b"content-length", b"6")]):
                response = await pool.request("POST", b"/up?x=1", headers, parts())
                await response.aclose()
        finally:
            await pool.aclose()
            server.close()

    asyncio.run(scenario())
    assert seen[0].startswith(b"POST /prefix/up?x=1 HTTP/1.1\r\n")
    assert seen[0].endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert seen[1].endswith(b"content-length: 6\r\n\r\nabcdef")


def test_an_upstream_that_goes_silent_mid_stream_times_out_after_what_it_sent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"5\r\nfirst\r\n")
        await writer.drain()
        await reader.read()

    async def scenario() -> list[bytes]:
        server, url = await serve(handler)
        pool = UpstreamPool(url, Timeouts(connect=1, read=0.3, write=1))
        got: list[bytes] = []
        response = await pool.request("GET", b"/", [], None)
        try:
            with pytest.raises(TimeoutError):
                async for chunk in response.chunks():
                    got.append(chunk)
        finally:
            await response.aclose()
            server.close()
        return got

    assert asyncio.run(scenario()) == [b"first"]


def test_a_response_that_arrives_a_few_bytes_at_a_time_reads_the_same() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    wire += chunked([b"data: one\n\n", b"data: two\n\n"])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for i in range(0, len(wire), 3):
            writer.write(wire[i : i + 3])
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    async def scenario() -> tuple[int, bytes]:
        server, url = await serve(handler)
        pool = UpstreamPool(url)
        try:
            return await body_of(pool)
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(scenario()) == (200, b"data: one\n\ndata: two\n\n")


def test_bytes_after_a_counted_body_keep_its_connection_out_of_the_pool() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
            await writer.drain()

    async def scenario() -> list[tuple[int, bytes]]:
        server, url = await serve(handler)
        pool = UpstreamPool(url)
        try:
            return [await body_of(pool) for _ in range(2)]
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(scenario()) == [(200, b"ok")] * 2
    assert connections == 2  # the first connection carried bytes nobody asked for: never reused


def test_a_slow_reader_holds_the_upstream_back_instead_of_buffering_the_body() -> None:
    size = 64 * 1024 * 1024
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = b"x" * (256 * 1024)
        with contextlib.suppress(ConnectionError):
            while sent < size:
                writer.write(block)
                await writer.drain()  # blocks while the client does not read
                sent += len(block)

    async def scenario() -> tuple[int, int]:
        server, url = await serve(handler)
        pool = UpstreamPool(url)
        response = await pool.request("GET", b"/", [], None)
        try:
            body = response.chunks()
            received = len(await anext(body))
            await asyncio.sleep(0.5)  # a client that stopped reading
            held_back_at = sent
            async for chunk in body:
                received += len(chunk)
            return held_back_at, received
        finally:
            await response.aclose()
            await pool.aclose()
            server.close()

    held_back_at, received = asyncio.run(scenario())
    assert received == size
    # Kernel socket buffers take a few MiB; without paused reading the whole body would be in the tap's memory.
    assert held_back_at < size // 4


@pytest.mark.parametrize(("idle_seconds", "connections"), [(5.0, 1), (0.05, 2)])
def test_an_idle_connection_is_reused_only_within_the_idle_limit(idle_seconds: float, connections: int) -> None:
    opened = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

    async def scenario() -> list[tuple[int, bytes]]:
        server, url = await serve(handler)
        pool = UpstreamPool(url, idle_seconds=idle_seconds)
        try:
            first = await body_of(pool)
            await asyncio.sleep(0.2)  # idle longer than the short limit, well under the long one
            return [first, await body_of(pool)]
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(scenario()) == [(200, b"ok")] * 2
    assert opened == connections
