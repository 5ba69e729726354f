"""Command line: spec-sidecar run | report | probe | enable | disable | status."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("not yet")
