"""Write the dashboards as JSON under grafana/dashboards/, or check that the committed JSON is current.

    python -m grafana.generate          # write
    python -m grafana.generate --check  # exit 1 if a committed file differs from what the code builds

The chart's dashboard ConfigMap reads the same files (deploy/helm/spec-sidecar/files/dashboards links here).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana import spec_sidecar_dashboard

OUT = Path(__file__).parent / "dashboards"
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {"spec-sidecar.json": spec_sidecar_dashboard.build}


# The SDK writes the interval variable's auto-step fields on every variable; Grafana's schema (and UI) only know
# them on interval variables, so they are dropped elsewhere.
INTERVAL_ONLY = ("auto", "auto_count", "auto_min")


def render(build: Callable[[], Dashboard]) -> str:
    board = json.loads(json.dumps(build(), cls=JSONEncoder))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "interval":
            for key in INTERVAL_ONLY:
                variable.pop(key, None)
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run python -m grafana.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
