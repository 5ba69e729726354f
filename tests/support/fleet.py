"""A stand-in Prometheus query API and a stand-in Lease, for tests of fleet mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from urllib.parse import parse_qs

import httpx

from sidecar.adapters.prometheus import (
    FleetQuery,
    FleetResult,
    query_fleet,
)


class FakeLease:
    """The fleet loop's Election protocol: the test says who holds the Lease; every campaign is counted."""

    def __init__(self, holder: str | None, me: str = "pod-b") -> None:
        self.holder, self.me, self.campaigns = holder, me, 0

    def campaign(self, now: float) -> bool:
        self.campaigns += 1
        if self.holder is None:
            self.holder = self.me
        return self.holder == self.me

    def lease_holder(self) -> str | None:
        return self.holder


SELECTOR = 'namespace="ml",pod=~"llm-[a-z0-9]+-[a-z0-9]+"'


def vector(*samples: tuple[dict[str, str], float | str]) -> bytes:
    result = [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in samples]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


Answers = Mapping[str, list[tuple[dict[str, str], float]]]


# What a Prometheus holding two pods of one Deployment would answer (summed per model by the queries).
FLEET: Answers = {
    "group by (__name__)": [({"__name__": "vllm:num_requests_running"}, 1)],
    "vllm:spec_decode_num_drafts_total": [({"model_name": "m"}, 300)],
    "vllm:spec_decode_num_draft_tokens_total": [({"model_name": "m"}, 1200)],
    "vllm:spec_decode_num_accepted_tokens_total": [({"model_name": "m"}, 480)],
    "vllm:spec_decode_num_accepted_tokens_per_pos_total": [
        ({"model_name": "m", "position": str(i)}, v) for i, v in enumerate((200, 140, 90, 50))
    ],
    "vllm:time_to_first_token_seconds_bucket": [
        ({"model_name": "m", "le": le}, v) for le, v in (("0.1", 50), ("1.0", 90), ("+Inf", 100))
    ],
    "vllm:kv_cache_usage_perc": [({"model_name": "m", "pod": "a"}, 0.2), ({"model_name": "m", "pod": "b"}, 0.4)],
}


def fake_prometheus(answers: Answers, fail: str | None = None) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.content.decode())["query"][0]
        if fail is not None and fail in query:
            return httpx.Response(500, text="boom")
        for needle, samples in answers.items():
            # the family name followed by its selector: `_total{` does not match `_per_pos_total{`
            if needle + "{" in query or (needle.startswith("group") and query.startswith(needle)):
                return httpx.Response(200, content=vector(*samples))
        return httpx.Response(200, content=vector())

    return handler


def fleet_round(handler: Callable[[httpx.Request], httpx.Response], window: float = 60) -> FleetResult:
    async def go() -> FleetResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await query_fleet(client, FleetQuery("http://prom:9090", SELECTOR, window, 1), 1000.0)

    return asyncio.run(go())
