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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

Headers = list[tuple[bytes, bytes]]
_READ_SIZE = 64 * 1024  # reading pauses while more than this waits to be relayed
_MAX_HEAD_BYTES = 1 << 20


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol before a response head arrived."""


class _Conn(asyncio.Protocol):
    """One upstream connection as an asyncio protocol: received bytes are kept as the network delivered them and
    handed out whole, with reading paused while too much waits. asyncio's StreamReader would copy every read
    into a bytearray and out again and add a layer of calls per read; a relay reads once per SSE event, so
    that was a fifth of the tap's CPU (profiled with py-spy at 64 streams)."""

    __slots__ = (
        "_buffered",
        "_data",
        "_drain",
        "_eof",
        "_loop",
        "_reading_paused",
        "_waiter",
        "idle_since",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._data: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None  # set while the transport asks us to stop writing
        self.idle_since = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._data.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_SIZE and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # no half-closed connections: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- what the pool and responses use ------------------------------------------------------------------

    async def read(self) -> bytes:
        """Everything received so far (at least one byte), or b"" once the upstream has closed."""
        while not self._data:
            if self._eof:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._data[0] if len(self._data) == 1 else b"".join(self._data)
        self._data.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put back bytes read past the end of a response head (they are the start of its body)."""
        if data:
            self._data.insert(0, data)
            self._buffered += len(data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self.is_closing():
            raise ConnectionResetError("upstream connection lost")
        if self._drain is not None and not self._drain.done():
            await self._drain

    def at_eof(self) -> bool:
        return self._eof and not self._data

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


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
            self._conn.abort()  # the pending read sees EOF
        else:
            self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()


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
        # True while the piece chunks() just yielded is the body's last: the relay can send it together with
        # the end of its own response (one write to the client instead of two).
        self.last_piece = False
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

    def _framing(self) -> _Dechunker | _Counted:
        if self._chunked:
            return _Dechunker()
        return _Counted(self._length)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one item per network read: decoded chunks (all complete in that read,
        together: vLLM writes one SSE event per chunk), or raw bytes. One loop, no nested generators: this
        runs once per SSE event of every stream."""
        conn = self._conn
        timeout = self._pool.timeouts.read
        watch = _SilenceWatch(conn, timeout) if timeout is not None else None
        framing = self._framing()
        try:
            while not framing.done:
                data = await conn.read()
                if watch is not None:
                    watch.touch()
                if not data:
                    if framing.ends_at_close:
                        break
                    raise UpstreamError("upstream closed in the middle of a body")
                out = framing.feed(data)
                if out:
                    self.last_piece = framing.done
                    yield out
            self._reusable = self._reusable and not framing.overrun
            self._complete = True
        except UpstreamError:
            if watch is not None and watch.fired:
                raise TimeoutError("upstream went silent in the middle of a body") from None
            raise
        finally:
            if watch is not None:
                watch.cancel()

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
        if len(self._idle) >= self._max_idle or conn.is_closing() or conn.at_eof():
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
            if now - conn.idle_since < self._idle_seconds and not conn.at_eof() and not conn.is_closing():
                return conn
            conn.close()
        return None

    async def _open(self) -> _Conn:
        try:
            async with asyncio.timeout(self.timeouts.connect):
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(lambda: _Conn(loop), self.host, self.port, ssl=self._ssl)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

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
        if isinstance(body, bytes):
            conn.write(head + body)
        else:
            conn.write(head)
            if body is not None:
                async for chunk in body:
                    conn.write(chunk if framed else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await self._drain(conn)
                if not framed:
                    conn.write(b"0\r\n\r\n")
        await self._drain(conn)

    async def _drain(self, conn: _Conn) -> None:
        async with asyncio.timeout(self.timeouts.write):
            await conn.drain()

    async def _read_head(self, conn: _Conn) -> tuple[int, Headers]:
        """The final response head (1xx heads are skipped); bytes after it go back to the connection."""
        buffer = b""
        async with asyncio.timeout(self.timeouts.read):
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD_BYTES:
                        raise UpstreamError("upstream response head too large")
                    data = await conn.read()
                    if not data:
                        raise UpstreamError("upstream closed the connection without a response")
                    buffer += data
                    continue
                status, headers = _parse_head(buffer[: end + 4])
                buffer = buffer[end + 4 :]
                if not 100 <= status < 200:
                    conn.unread(buffer)
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


class _Dechunker:
    """Chunked transfer coding, decoded from whatever each network read brought."""

    __slots__ = ("_buffer", "done")
    ends_at_close = False
    overrun = False

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The data of every chunk now complete."""
        buffer = self._buffer + data if self._buffer else data
        out, consumed, self.done = _complete_chunks(buffer)
        self._buffer = buffer[consumed:]
        return out


class _Counted:
    """A body of content-length bytes, or (length None) one that ends when the upstream closes."""

    __slots__ = ("done", "ends_at_close", "overrun", "remaining")

    def __init__(self, length: int | None) -> None:
        self.remaining = length
        self.ends_at_close = length is None
        self.done = length == 0
        self.overrun = False  # bytes after the body: not a connection to reuse

    def feed(self, data: bytes) -> bytes:
        if self.remaining is None:
            return data
        if len(data) > self.remaining:
            self.overrun = True
            data = data[: self.remaining]
        self.remaining -= len(data)
        self.done = self.remaining == 0
        return data


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
