"""The tap's HTTP/1.1 client to its one upstream: a LIFO keep-alive pool and streamed bodies, nothing else.

Why not httpx: httpcore's pool re-scans every pooled connection (polling each idle socket) on every request
start and every response end, so its cost per request grows with concurrency; at 200 concurrent streams that
was most of the tap's CPU (about 7 ms per scan, profiled). A proxy to one host needs much less: take the most
recently idle connection or open one, write the request, read the response head, then hand the body over
chunk by chunk exactly as it is framed (content-length, chunked, or until close).

A connection goes back to the pool only when its response was read to the end and both sides keep it alive;
a response abandoned halfway (client gone, error) closes its connection, which is also how vLLM learns that
the request was cancelled.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from urllib.parse import urlsplit

Headers = list[tuple[bytes, bytes]]
_READ_SIZE = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol before a response head arrived."""


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.idle_since = reader, writer, 0.0

    def close(self) -> None:
        self.writer.close()


class _SilenceWatch:
    """The read timeout of a body: aborts the connection once no byte came for `seconds`. One timer per
    response, re-armed lazily, instead of a timeout context around every read of a long stream."""

    __slots__ = ("_conn", "_handle", "_loop", "_seconds", "fired", "last")

    def __init__(self, conn: _Conn, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn, self._seconds = conn, seconds
        self.last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_at(self.last + seconds, self._check)

    def _check(self) -> None:
        due = self.last + self._seconds
        if self._loop.time() >= due:
            self.fired = True
            self._conn.writer.transport.abort()  # the pending read sees EOF
        else:
            self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()


async def _read(reader: asyncio.StreamReader, size: int, watch: _SilenceWatch | None) -> bytes:
    data = await reader.read(size)
    if watch is not None:
        watch.touch()
    return data


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float | None = 600.0  # longest silence while waiting for a response head or body bytes
    write: float = 60.0


class UpstreamResponse:
    """A response head; iterate ``chunks()`` once for the body, then ``aclose()`` (always)."""

    def __init__(self, pool: UpstreamPool, conn: _Conn, status: int, headers: Headers, method: str) -> None:
        self.status, self.headers = status, headers
        self._pool, self._conn = pool, conn
        self._complete = self._closed = False
        self._reusable = _keeps_alive(headers)
        self._length: int | None = None
        self._chunked = False
        if method == "HEAD" or status in (204, 304):
            self._length = 0
        elif _has_token(_get(headers, b"transfer-encoding"), b"chunked"):
            self._chunked = True
        elif (declared := _get(headers, b"content-length")) is not None and declared.strip().isdigit():
            self._length = int(declared)
        else:
            self._reusable = False  # body ends when the upstream closes

    def header(self, name: bytes) -> bytes | None:
        return _get(self.headers, name)

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        timeout = self._pool.timeouts.read
        watch = _SilenceWatch(self._conn, timeout) if timeout is not None else None
        try:
            if self._chunked:
                async for data in self._dechunk(reader, watch):
                    yield data
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    data = await _read(reader, min(remaining, _READ_SIZE), watch)
                    if not data:
                        raise UpstreamError("upstream closed before the end of the body")
                    remaining -= len(data)
                    yield data
            else:
                while data := await _read(reader, _READ_SIZE, watch):
                    yield data
            self._complete = True
        except UpstreamError:
            if watch is not None and watch.fired:
                raise TimeoutError("upstream went silent in the middle of a body") from None
            raise
        finally:
            if watch is not None:
                watch.cancel()

    @staticmethod
    async def _dechunk(reader: asyncio.StreamReader, watch: _SilenceWatch | None) -> AsyncIterator[bytes]:
        """Chunked transfer coding, decoded from whatever each network read brought: one await per read, and
        every chunk that is complete in it goes out together (vLLM writes one SSE event per chunk)."""
        buffer = b""
        while True:
            out, consumed, done = _complete_chunks(buffer)
            if out:
                yield out
            if done:
                return
            buffer = buffer[consumed:]
            data = await _read(reader, _READ_SIZE, watch)
            if not data:
                raise UpstreamError("upstream closed in the middle of a chunked body")
            buffer = buffer + data if buffer else data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._reusable:
            self._pool.release(self._conn)
        else:
            self._conn.close()


class UpstreamPool:
    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts | None = None,
        max_idle: int = 512,
        idle_seconds: float = 4.0,  # under uvicorn's 5 s keep-alive (vLLM's server), so we rarely race its close
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.rpartition("@")[2].encode()
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeouts = timeouts or Timeouts()
        self._idle: list[_Conn] = []
        self._max_idle, self._idle_seconds = max_idle, idle_seconds

    async def read(self, awaitable: Awaitable[bytes]) -> bytes:
        """Await one read under the read timeout."""
        async with asyncio.timeout(self.timeouts.read):
            return await awaitable

    async def request(
        self, method: str, target: bytes, headers: Headers, body: bytes | AsyncIterator[bytes] | None
    ) -> UpstreamResponse:
        """Send one request; raise UpstreamError (or TimeoutError) if no response head comes back."""
        streamed = body is not None and not isinstance(body, bytes)
        conn = None if streamed else self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, body)
            except (UpstreamError, ConnectionError, asyncio.IncompleteReadError):
                pass  # a kept-alive connection the upstream had just closed: retry once on a new one
        return await self._exchange(await self._open(), method, target, headers, body)

    def release(self, conn: _Conn) -> None:
        if len(self._idle) >= self._max_idle or conn.writer.is_closing():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self._idle_seconds and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _open(self) -> _Conn:
        try:
            async with asyncio.timeout(self.timeouts.connect):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=1 << 20)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _Conn(reader, writer)

    async def _exchange(
        self, conn: _Conn, method: str, target: bytes, headers: Headers, body: bytes | AsyncIterator[bytes] | None
    ) -> UpstreamResponse:
        try:
            await self._send(conn, method, target, headers, body)
            status, response_headers = await self._read_head(conn)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn, status, response_headers, method)

    async def _send(
        self, conn: _Conn, method: str, target: bytes, headers: Headers, body: bytes | AsyncIterator[bytes] | None
    ) -> None:
        lines = [b"%s %s HTTP/1.1" % (method.encode(), self.prefix + target), b"host: " + self.host_header]
        lines += [name + b": " + value for name, value in headers]
        framed = isinstance(body, bytes) or _get(headers, b"content-length") is not None
        if isinstance(body, bytes) and _get(headers, b"content-length") is None:
            lines.append(b"content-length: %d" % len(body))
        elif body is not None and not framed:
            lines.append(b"transfer-encoding: chunked")
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        writer = conn.writer
        if isinstance(body, bytes):
            writer.write(head + body)
        else:
            writer.write(head)
            if body is not None:
                async for chunk in body:
                    writer.write(chunk if framed else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await self._drain(writer)
                if not framed:
                    writer.write(b"0\r\n\r\n")
        await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.timeouts.write):
            await writer.drain()

    async def _read_head(self, conn: _Conn) -> tuple[int, Headers]:
        while True:
            try:
                raw = await self.read(conn.reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError as exc:
                raise UpstreamError("upstream closed the connection without a response") from exc
            except asyncio.LimitOverrunError as exc:
                raise UpstreamError("upstream response head too large") from exc
            status, headers = _parse_head(raw)
            if not 100 <= status < 200:
                return status, headers


def _parse_head(raw: bytes) -> tuple[int, Headers]:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise UpstreamError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    if parts[0] == b"HTTP/1.0" and not _has_token(_get(headers, b"connection"), b"keep-alive"):
        headers.append((b"connection", b"close"))
    return int(parts[1]), headers


def _complete_chunks(buffer: bytes) -> tuple[bytes, int, bool]:
    """(data of the complete chunks at the start of buffer, bytes they take, whether the last chunk was seen)."""
    parts: list[bytes] = []
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            break
        try:
            size = int(buffer[position:line_end].split(b";", 1)[0], 16)
        except ValueError:
            raise UpstreamError("bad chunk size from upstream") from None
        if size == 0:
            # The last chunk, then optional trailer fields (not relayed), then an empty line.
            if buffer.startswith(b"\r\n", line_end + 2) or buffer.find(b"\r\n\r\n", line_end) >= 0:
                return b"".join(parts), len(buffer), True
            break
        end = line_end + 2 + size
        if len(buffer) < end + 2:
            break
        parts.append(buffer[line_end + 2 : end])
        position = end + 2
    return (parts[0] if len(parts) == 1 else b"".join(parts)), position, False


def _get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _has_token(value: bytes | None, token: bytes) -> bool:
    return value is not None and token in (t.strip().lower() for t in value.split(b","))


def _keeps_alive(headers: Headers) -> bool:
    return not _has_token(_get(headers, b"connection"), b"close")
