"""kill -9 at any moment of a toggle leaves a manifest that is either before or after, never half-written."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sidecar.adapters.manifest import ManifestActuator
from sidecar.core import specargs
from tests.support.manifest_files import LIST_MANIFEST, load_all

ROOT = Path(__file__).parents[3]
TOGGLER = """
import sys
from sidecar.adapters.manifest import ManifestActuator
act = ManifestActuator(sys.argv[1], container="vllm")
while True:
    act.disable("x")
    act.enable("y")
"""


def original_args(tmp_path: Path) -> list[str]:
    path = tmp_path / "original.yaml"
    path.write_text(LIST_MANIFEST)
    args = ManifestActuator(path, container="vllm").read().args
    assert args is not None
    return args


def test_the_manifest_is_consistent_after_kill_9_at_random_moments(tmp_path: Path) -> None:
    expected = original_args(tmp_path)
    path = tmp_path / "deploy.yaml"
    path.write_text(LIST_MANIFEST)
    rng = random.Random(3)
    for _ in range(12):
        toggler = subprocess.Popen([sys.executable, "-c", TOGGLER, str(path)], cwd=ROOT)
        time.sleep(rng.uniform(1.0, 1.6))  # imports take ~1 s, then it toggles as fast as it can
        toggler.send_signal(signal.SIGKILL)
        toggler.wait(10)

        assert len(load_all(path)) == 2  # parses, both documents there
        view = ManifestActuator(path, container="vllm").read()
        if view.speculation:
            assert view.args == expected
            assert view.record.state in (None, "on") and view.record.removed is None
        else:
            assert view.record.state == "off" and view.record.removed is not None
            assert specargs.restore(view.command, view.args, view.record.removed) == (None, expected)
    act = ManifestActuator(path, container="vllm")
    assert act.read().record.history  # it did toggle in between
    act.disable("after the kills")  # the next writer removes any temp file a killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deploy.yaml.lock", "deploy.yaml", "original.yaml"]
