"""/status in a real browser: the real `spec-sidecar run`, real traffic through its tap, headless Chromium.

The engine is tests/support/fake_vllm.py: its /metrics counters move with the completions it serves, so the page
must show numbers computed from what the engine really counted (the aggregate from /metrics, the buckets from the
per-request metrics the tap saw). Chromium (Debian, installed by scripts/install-chromium.sh) renders the page:
``--dump-dom`` gives the text a person would read, ``--screenshot`` proves something visible was drawn.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.fake_vllm import FakeVllm, fake_vllm
from tests.support.manifest_files import LIST_MANIFEST
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until
from tests.support.tap_upstream import MODEL

FLAGS = ("--scrape-interval", "0.3", "--scrape-timeout", "2", "--window", "600", "--min-draft-tokens", "100")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
COLD, HOT = 14, 6  # requests at temperature 0 and at 1.0


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), "chromium missing: run scripts/install-chromium.sh (make test does)"
    return path


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.parts.append(data.strip())


def seed_rule(draft: int, accepted: int, min_draft: int = 100) -> str:
    if draft < min_draft:
        return "no-data"
    ratio = accepted / draft
    return "keep" if ratio >= 0.65 else "borderline" if ratio >= 0.5 else "disable"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeVllm, SidecarProcess, Path]]:
    tmp_path = tmp_path_factory.mktemp("status")
    with fake_vllm(kv_cache_usage=0.42) as engine, run_sidecar(tmp_path, "--vllm-url", engine.url, *FLAGS) as sidecar:
        wait_until(lambda: sidecar.value("specdecode_target_up") == 1.0, 15, sidecar.log)
        with httpx.Client(base_url=sidecar.url, timeout=30) as client:
            # Two phases so the last hour's line has a shape: cold traffic first, then hot traffic joins.
            _send(client, temperature=0.0, count=COLD)
            _wait_for_engine_totals(sidecar, engine)
            _send(client, temperature=1.0, count=HOT)
        _wait_for_engine_totals(sidecar, engine)
        yield engine, sidecar, tmp_path


def _send(client: httpx.Client, *, temperature: float, count: int) -> None:
    for i in range(count):
        body = {"model": MODEL, "prompt": f"request {i}", "max_tokens": 40, "temperature": temperature}
        if i % 2:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text


def _wait_for_engine_totals(sidecar: SidecarProcess, engine: FakeVllm) -> None:
    def caught_up() -> bool:
        models = httpx.get(sidecar.url + "/api/report", timeout=5).json()["models"]
        return bool(models) and models[0]["window"]["draft_tokens"] == engine.draft_tokens

    wait_until(caught_up, 20, sidecar.log)
    # A few more scrapes, so the last hour's chart has points after the traffic.
    start = sidecar.value("specdecode_scrapes_total", result="success") or 0.0
    wait_until(lambda: (sidecar.value("specdecode_scrapes_total", result="success") or 0.0) >= start + 3, 10)


def test_status_page_shows_the_numbers_the_engine_counted(live: tuple[FakeVllm, SidecarProcess, Path]) -> None:
    engine, sidecar, tmp_path = live
    done = headless(tmp_path, "--dump-dom", sidecar.url + "/status")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Text()
    dom.feed(done.stdout)
    text = " | ".join(dom.parts)

    assert MODEL in text
    assert f"{engine.accepted_tokens / engine.draft_tokens:.3f}" in text  # aggregate, from /metrics increases
    assert seed_rule(engine.draft_tokens, engine.accepted_tokens) in dom.parts
    assert "42%" in text  # KV cache usage as the engine reports it
    cold, hot = engine.by_temperature[0.0], engine.by_temperature[1.0]
    assert cold[2] == COLD and hot[2] == HOT
    # The tap's buckets: label, requests, share of requests, token-weighted acceptance, then the bucket's verdict.
    for label, row in (("0", cold), ("[1,+Inf)", hot)):
        i = dom.parts.index(label, dom.parts.index("temperature"))
        assert dom.parts[i + 1 : i + 4] == [str(row[2]), f"{row[2] / (COLD + HOT):.0%}", f"{row[1] / row[0]:.3f}"]
        assert seed_rule(row[0], row[1]) in dom.parts[i + 4 : i + 9]
    assert "actuator: not configured" in text
    assert "No decisions yet." in text
    assert "What to do" in text
    assert "target up | yes" in text


def test_status_page_draws_the_chart_with_threshold_lines(live: tuple[FakeVllm, SidecarProcess, Path]) -> None:
    _engine, sidecar, tmp_path = live
    done = headless(tmp_path, "--dump-dom", sidecar.url + "/status")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('class="threshold"') == 2
    assert "disable below 0.5" in done.stdout and "keep from 0.65" in done.stdout
    assert 'class="series"' in done.stdout  # acceptance was measured: a line (or point) for the model
    assert "no acceptance measured in the last hour" not in done.stdout


def test_status_page_screenshot_is_a_real_picture(live: tuple[FakeVllm, SidecarProcess, Path]) -> None:
    engine, sidecar, tmp_path = live
    shot = tmp_path / "status.png"
    done = headless(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", sidecar.url + "/status")
    assert done.returncode == 0, done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    found = image.getcolors(maxcolors=1 << 20) or []
    # An RGB image's colours are (r, g, b) tuples; getcolors is typed for single-band images (plain numbers) too.
    colours = [(count, colour) for count, colour in found if isinstance(colour, tuple)]
    assert len(colours) == len(found)
    assert len(colours) > 50  # text, badges, chart lines: not a blank or single-colour page
    background = max(colours)[1]
    painted = sum(count for count, colour in colours if colour != background)
    assert painted > 0.05 * 1280 * 1600
    # The verdict badge is drawn in its colour (keep green, borderline amber, disable red).
    badge = {"keep": (21, 128, 61), "borderline": (180, 83, 9), "disable": (185, 28, 28), "no-data": (107, 114, 128)}
    want = badge[seed_rule(engine.draft_tokens, engine.accepted_tokens)]
    near = sum(count for count, colour in colours if sum(abs(a - b) for a, b in zip(colour, want, strict=True)) <= 12)
    assert near > 200


def test_status_page_shows_the_actuator_and_the_decisions_of_the_real_loop(tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(LIST_MANIFEST)
    loop = ("--deployment-file", str(manifest), "--container", "vllm", "--window", "2", "--trip-windows", "1",
            "--warmup-windows", "0")  # fmt: skip
    flags = ("--scrape-interval", "0.3", "--min-draft-tokens", "100", "--cooldown", "0", *loop)
    with fake_vllm() as engine, run_sidecar(tmp_path, "--vllm-url", engine.url, *flags) as sidecar:
        with httpx.Client(base_url=sidecar.url, timeout=30) as client:

            def disabled() -> bool:
                _send(client, temperature=1.0, count=4)  # acceptance far below 0.5: the loop must act
                return "<td>changed</td>" in client.get("/status").text

            wait_until(disabled, 60, sidecar.log)
        wait_until(lambda: "speculation</dt><dd>off" in httpx.get(sidecar.url + "/status").text, 10, sidecar.log)
        done = headless(tmp_path, "--dump-dom", sidecar.url + "/status")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Text()
    dom.feed(done.stdout)
    text = " | ".join(dom.parts)
    assert "actuator: not configured" not in text
    assert f"target | file:{manifest} container=vllm" in text
    assert "speculation | off" in text  # read back from the rewritten manifest
    decision = dom.parts.index("disable", dom.parts.index("Decision history"))
    assert dom.parts[decision + 1] == "low_acceptance" and "changed" in dom.parts[decision + 2 : decision + 4]
