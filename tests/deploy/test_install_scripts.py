"""The install scripts keep pip's chatter out of a user's terminal but never hide why an install failed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


# scripts/apt-install.sh (what install-prometheus, install-chromium and install-tools call) as a user who is not
# root, against stand-ins on PATH: `id` says uid 1000, `sudo` resets the environment as the real one does, and
# `apt-get` writes down what it was run with.
FAKE_ID = '#!/bin/sh\n[ "$1" = -u ] && { echo 1000; exit 0; }\nexit 1\n'
FAKE_SUDO = """#!/bin/sh
echo "sudo $*" >>"{log}"
[ "$1" = -n ] || exit 1
shift
[ "$1" = true ] && exit 0
exec env -i PATH="$PATH" "$@"
"""
SUDO_WANTS_A_PASSWORD = '#!/bin/sh\necho "sudo: a password is required" >&2\nexit 1\n'
# A machine with stale package lists: install fails until update has run.
FAKE_APT_GET = """#!/bin/sh
echo "apt-get DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-unset}} $*" >>"{log}"
case "$*" in
  *" update") : >"{lists}"; exit 0 ;;
  *" install "*) [ -e "{lists}" ] ;;
esac
"""


def _apt_install(tmp_path: Path, sudo: str | None) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fakes = {"id": FAKE_ID, "apt-get": FAKE_APT_GET.format(log=log, lists=tmp_path / "lists")}
    if sudo is not None:
        fakes["sudo"] = sudo.format(log=log)
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for name in ("env", "sh"):  # all the real commands the script and the fakes need; no real sudo or apt-get
        (bin_dir / name).symlink_to(shutil.which(name) or f"/usr/bin/{name}")
    done = subprocess.run(
        [shutil.which("bash") or "bash", str(ROOT / "scripts" / "apt-install.sh"), "install-x", "pkg-a", "pkg-b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(bin_dir), "DEBIAN_FRONTEND": "noninteractive"},  # exported, as the old scripts did
    )
    return done, log.read_text().splitlines() if log.exists() else []


def test_without_root_apt_get_runs_through_sudo_and_still_gets_debian_frontend_noninteractive(
    tmp_path: Path,
) -> None:
    done, calls = _apt_install(tmp_path, FAKE_SUDO)
    assert done.returncode == 0, done.stderr
    apt_calls = [c for c in calls if c.startswith("apt-get ")]
    assert [c.split(" -o ")[0] for c in apt_calls] == ["apt-get DEBIAN_FRONTEND=noninteractive -qq -y"] * 3
    assert [c.rsplit("--force-confold ", 1)[1] for c in apt_calls] == [
        "install --no-install-recommends pkg-a pkg-b",
        "update",  # the first install failed on stale lists
        "install --no-install-recommends pkg-a pkg-b",
    ]
    assert all(c.startswith("sudo -n ") for c in calls if not c.startswith("apt-get "))


@pytest.mark.parametrize("sudo", [None, SUDO_WANTS_A_PASSWORD], ids=["no sudo", "sudo wants a password"])
def test_without_root_or_passwordless_sudo_it_stops_in_one_line_saying_what_to_do(
    tmp_path: Path, sudo: str | None
) -> None:
    done, calls = _apt_install(tmp_path, sudo)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "install-x: installing pkg-a pkg-b needs root or passwordless sudo; run as root, or install them yourself"
        " (apt-get install pkg-a pkg-b)"
    ]
    assert calls == []  # apt-get never ran
