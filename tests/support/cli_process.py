"""The installed ``spec-sidecar`` entry point run as a new user would: a process, its exit code and its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENTRY_POINT = Path(sys.executable).with_name("spec-sidecar")


def cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # A HOME without ~/.kube and no in-cluster variables: "no cluster" is what a laptop without kubectl has.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPEC_SIDECAR_", "KUBE"))}
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, "HOME": str(home), **env},
    )
