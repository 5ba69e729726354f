"""Which requests go through FastAPI and which go straight to the tap (sidecar.web.app.SidecarApp).

The OpenAI API under /v1/ is the tap's hot path: it must not pay for FastAPI's middleware on every request and
every streamed chunk (docs/benchmarks.md, "Tap"). Everything else keeps FastAPI: the sidecar's own routes, and
other paths that FastAPI's last mount hands to the tap.
"""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.settings import Settings
from sidecar.web.app import create_app
from tests.support.tap_upstream import running_upstream


class PathRecorder:
    """A pure ASGI middleware that notes every path FastAPI's middleware stack sees."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_openai_requests_skip_fastapi_and_everything_else_still_goes_through_it() -> None:
    seen: list[str] = []
    with running_upstream() as upstream:
        app = create_app(Settings(vllm_url=upstream.url, tap_forward_paths="openai,/echo/*"))
        app.add_middleware(PathRecorder, seen=seen)

        async def scenario() -> dict[str, int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
                body = {"model": "m", "prompt": "hi", "max_tokens": 4, "temperature": 0}
                statuses = {
                    "/healthz": (await client.get("/healthz")).status_code,
                    "/v1/completions": (await client.post("/v1/completions", json=body)).status_code,
                    "/v1/models": (await client.get("/v1/models")).status_code,
                    "/echo/x": (await client.get("/echo/x")).status_code,
                }
            await app.state.tap.aclose()
            return statuses

        statuses = asyncio.run(scenario())
    assert statuses == {"/healthz": 200, "/v1/completions": 200, "/v1/models": 200, "/echo/x": 200}
    assert seen == ["/healthz", "/echo/x"]
