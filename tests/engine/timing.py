"""A client that times its own requests, independently of anything the engine or the sidecar reports.

Each request streams; the client notes when it sent the request, when the first and the last chunk carrying
tokens arrived, and how many tokens the engine says it generated (the final usage chunk). From them, per request:
time to first token, time per output token as vLLM defines it ((last − first) / (tokens − 1), so a step that
emits several tokens counts as several tokens) and end-to-end latency. A closed loop of `concurrency` workers
keeps that many requests in flight for a fixed time, which is the load the sidecar groups its windows by.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

REQUEST_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Timed:
    sent: float  # time.monotonic() when the request went out
    ttft: float
    tpot: float
    e2e: float
    tokens: int


def timed_request(
    client: httpx.Client, url: str, model: str, prompt: str, *, max_tokens: int, temperature: float, seed: int
) -> Timed:
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    sent = time.monotonic()
    first = last = None
    tokens = None
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[len("data:") :])
            if event.get("choices"):
                last = time.monotonic()
                first = first if first is not None else last
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    done = time.monotonic()
    if first is None or last is None or tokens is None or tokens < 2:
        raise RuntimeError(f"the engine streamed no usable answer (tokens {tokens}) for {prompt!r}")
    return Timed(sent, first - sent, (last - first) / (tokens - 1), done - sent, tokens)


def closed_loop(
    url: str,
    model: str,
    prompts: Sequence[str],
    *,
    concurrency: int,
    seconds: float,
    max_tokens: int,
    temperature: float = 0.0,
    stop: threading.Event | None = None,
) -> list[Timed]:
    """`concurrency` workers each send request after request (prompt i, seed i) until `seconds` have passed or
    `stop` is set, whichever comes first (requests in flight then finish)."""
    results: list[Timed] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client() as client:
            while time.monotonic() < stop_at and not errors and not (stop is not None and stop.is_set()):
                with lock:
                    i = next(counter)
                try:
                    timed = timed_request(
                        client,
                        url,
                        model,
                        prompts[i % len(prompts)],
                        max_tokens=max_tokens,
                        temperature=temperature,
                        seed=i,
                    )
                except (httpx.HTTPError, RuntimeError) as error:
                    errors.append(error)
                    return
                with lock:
                    results.append(timed)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, the first: {errors[0]!r}") from errors[0]
    return sorted(results, key=lambda t: t.sent)
