"""The install scripts keep pip's chatter out of a user's terminal but never hide why an install failed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_a_failed_vllm_install_shows_pips_own_error_and_where_the_whole_log_is(tmp_path: Path) -> None:
    # No index and no local wheels: the torch step must fail, quickly and without downloading anything.
    wheels = tmp_path / "no-wheels"
    wheels.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
        "SPEC_SIDECAR_CACHE": str(tmp_path / "cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-vllm.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # stdout is the venv's path, and only on success
    assert "install-vllm: failed: " in done.stderr and "torch==" in done.stderr
    assert "ERROR: No matching distribution found for torch==" in done.stderr
    log = tmp_path / "cache" / "install-vllm.log"
    assert f"the whole output is in {log}" in done.stderr
    assert "ERROR: No matching distribution found for torch==" in log.read_text()
    assert not (tmp_path / "cache" / "vllm-venv" / "vllm-requirements.txt").exists()  # stopped at the failure
