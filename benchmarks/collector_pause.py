"""How long one full pass of Python's cyclic collector takes over a window of the worst admitted scrapes.

A full pass stalls the event loop (and with it /healthz and the tap) for as long as it walks the objects it
tracks. This builds a 13-snapshot window (the default 60 s / 5 s) of the bodies of issue #11 the default bounds
still admit, lets young passes run as in a live sidecar, then times full passes in CPU time of this thread, so
the figure does not depend on how busy the machine is. With ``--compare DIR`` it runs the same in another
checkout (e.g. one made with `git worktree add`) in a subprocess and prints both and their ratio.

    .venv/bin/python benchmarks/collector_pause.py
    before="$(mktemp -d)/before" && git worktree add "$before" <commit>
    .venv/bin/python benchmarks/collector_pause.py --compare "$before"
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = ("admitted_worst", "histograms_admitted")


def _bodies(case: str) -> Callable[[int], bytes]:
    from tests.support.hostile_engine import MB, admitted_worst_body, histogram_body

    if case == "admitted_worst":
        return admitted_worst_body
    # What the default 32 MiB body cap and series bound admit of histograms (benchmarks/scrape_stress.py's case).
    return lambda n: histogram_body(8 * MB, scrape=n)


def measure(case: str, snapshots: int = 13, passes: int = 5) -> dict[str, float]:
    from sidecar.scrape.fetch import parse_payload

    body = _bodies(case)
    window = []
    first_meetings = []  # the full pass right after a scrape: the first one to meet that snapshot
    for n in range(1, snapshots + 1):
        snapshot, _, _ = parse_payload(body(n), float(n))
        window.append(snapshot)
        gc.collect(0)
        gc.collect(1)
        start = time.thread_time()
        gc.collect()
        first_meetings.append(time.thread_time() - start)
    seconds = []  # later full passes, over the whole window
    for _ in range(passes):
        start = time.thread_time()
        gc.collect()
        seconds.append(time.thread_time() - start)
    return {
        "tracked_objects": float(len(gc.get_objects())),
        "full_pass_ms_median": 1000 * statistics.median(seconds),
        "full_pass_ms_max": 1000 * max(seconds),
        "first_pass_ms_median": 1000 * statistics.median(first_meetings[-5:]),
        "snapshots": float(len(window)),
    }


def _run_in(checkout: Path, case: str) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(checkout)!r}); sys.path.insert(1, {str(ROOT)!r}); "
        f"from benchmarks.collector_pause import measure; print(json.dumps(measure({case!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="another checkout to measure the same way, side by side")
    parser.add_argument("--case", action="append", choices=CASES, help="a case to run (default: all)")
    args = parser.parse_args()
    print("| case | code | tracked objects | first full pass after a scrape, ms | later full passes ms: median | max |")
    print("|---|---|---:|---:|---:|---:|")
    for case in args.case or CASES:
        here = _run_in(ROOT, case)
        rows = [("this checkout", here)]
        if args.compare:
            rows.append((str(args.compare.name), _run_in(args.compare.resolve(), case)))
        for name, r in rows:
            print(
                f"| {case} | {name} | {r['tracked_objects']:,.0f} | {r['first_pass_ms_median']:.1f} | "
                f"{r['full_pass_ms_median']:.1f} | {r['full_pass_ms_max']:.1f} |"
            )
        if args.compare:
            ratio = rows[1][1]["full_pass_ms_median"] / max(here["full_pass_ms_median"], 1e-9)
            first = rows[1][1]["first_pass_ms_median"] / max(here["first_pass_ms_median"], 1e-9)
            print(f"| {case} | ratio (other / this) | | {first:.1f}x | {ratio:.1f}x | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
