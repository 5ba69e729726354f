"""A stand-in engine /metrics endpoint for tests: serves whatever payload the test sets, or fails on demand.

It is a real HTTP server on 127.0.0.1 (stdlib, in a thread) so the sidecar's real httpx scrape path is
exercised: status codes, slow answers, oversized bodies and garbage all travel over a socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    payload: bytes = b""
    status: int = 200
    delay_seconds: float = 0.0
    hits: int = 0


class MetricsReplay:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self._server: ThreadingHTTPServer | None = None
        self.accept_headers: list[str] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, payload: str | bytes, status: int = 200, delay_seconds: float = 0.0) -> None:
        body = payload.encode() if isinstance(payload, str) else payload
        self.behaviour = Behaviour(body, status, delay_seconds, self.behaviour.hits)

    def start(self) -> None:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                b = replay.behaviour
                b.hits += 1
                replay.accept_headers.append(self.headers.get("Accept", ""))
                if b.delay_seconds:
                    time.sleep(b.delay_seconds)
                try:
                    self.send_response(b.status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(b.payload)))
                    self.end_headers()
                    self.wfile.write(b.payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper gave up (timeout): that is the point of a slow answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def metrics_replay() -> Iterator[MetricsReplay]:
    replay = MetricsReplay()
    replay.start()
    try:
        yield replay
    finally:
        replay.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
