"""The demo's sidecar is started with flags the real CLI accepts, and every demo setting is in the user docs."""

from __future__ import annotations

import re
from pathlib import Path

from scripts import demo
from scripts.demo_view import WINDOW_SECONDS
from sidecar.cli.flags import settings_from_args
from sidecar.cli.main import build_parser
from sidecar.core.temperature import TemperatureBuckets, parse_edges
from sidecar.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_the_demos_sidecar_keeps_the_whole_run_in_its_temperature_buckets() -> None:
    command = demo.sidecar_command("http://127.0.0.1:8000", Path("deployment.yaml"), 8081)
    args = build_parser().parse_args(command[command.index("run") :])

    settings = settings_from_args(args, Settings)

    # Longer than any run (four phases, two engine restarts of up to five minutes each, and the end).
    assert settings.bucket_window >= len(demo.TEMPERATURES) * demo.PHASE_SECONDS + 3600
    assert settings.window == WINDOW_SECONDS
    assert settings.warmup_windows == 0


def test_each_phase_temperature_gets_a_bucket_of_its_own() -> None:
    buckets = TemperatureBuckets(parse_edges(demo.TEMPERATURE_EDGES))

    labels = [buckets.label_for(t) for t in demo.TEMPERATURES]

    assert len(set(labels)) == len(demo.TEMPERATURES), labels


def test_every_environment_variable_the_demo_reads_is_in_the_demo_docs() -> None:
    sources = ["scripts/demo.py", "tests/engine/machine_lock.py", "tests/engine/provision.py"]
    names = {
        name
        for source in sources
        for name in re.findall(r'os\.environ\.get\("([A-Z_]+)"', (REPO / source).read_text())
        if name != "XDG_CACHE_HOME"  # the platform's own; SPEC_SIDECAR_CACHE is the demo's setting
    }
    docs = (REPO / "docs" / "demo.md").read_text()

    assert "DEMO_PHASE_SECONDS" in names
    assert [name for name in sorted(names) if f"`{name}`" not in docs] == []
