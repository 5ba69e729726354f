"""The campaign's worst finding, end to end: a real `spec-sidecar run` process scraping an engine whose
accepted-tokens counter is negative, with a real manifest file as its target (--deployment-file).

Before the fix the controller wrote a `disable` (reason low_acceptance) to the manifest from ratios of -37.
Now the windows are invalid: the manifest stays byte for byte, the report says why, and the decisions are
`invalid_window`. The same loop, fed possible numbers as low, does disable: the harness can see an action.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sidecar.adapters.manifest import ManifestActuator
from tests.support.manifest_files import LIST_MANIFEST
from tests.support.payloads import vllm_payload
from tests.support.replay import MetricsReplay, metrics_replay
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

LOOP = (
    "--scrape-interval", "0.2", "--scrape-timeout", "1", "--window", "1", "--min-draft-tokens", "100",
    "--trip-windows", "1", "--warmup-windows", "0", "--cooldown", "0", "--container", "vllm",
)  # fmt: skip


@contextmanager
def growing(replay: MetricsReplay, payload: Callable[[int], str]) -> Iterator[None]:
    """Counters that move on every 50 ms, as an engine under traffic."""
    stop = threading.Event()

    def feed() -> None:
        n = 1
        while not stop.is_set():
            replay.serve(payload(n))
            n += 1
            stop.wait(0.05)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def negative_accepted(n: int) -> str:
    # What the campaign served: drafting goes on, accepted runs ever more negative (ratios of -37 on main).
    return vllm_payload(drafts=100 * n, draft_tokens=400 * n, accepted=-37 * 400 * n, per_position=(0, 0, 0, 0))


def low_but_possible(n: int) -> str:
    return vllm_payload(
        drafts=100 * n, draft_tokens=400 * n, accepted=40 * n, per_position=(20 * n, 10 * n, 6 * n, 4 * n)
    )


def decisions(sidecar: SidecarProcess, reason: str) -> float:
    return sum(
        value
        for (name, labels), value in sidecar.metrics().items()
        if name == "specdecode_decisions_total" and ("reason", reason) in labels
    )


def test_a_negative_accepted_counter_never_writes_a_disable_to_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(LIST_MANIFEST)
    with metrics_replay() as replay:
        replay.serve(negative_accepted(0))
        with run_sidecar(tmp_path, "--vllm-url", replay.url, "--deployment-file", str(manifest), *LOOP) as sidecar:
            with growing(replay, negative_accepted):
                # Ten and more full windows of it, each one of them a disable before the fix.
                wait_until(lambda: decisions(sidecar, "invalid_window") >= 10, 30, sidecar.log)
                report = httpx.get(sidecar.url + "/api/report").json()
                invalid = sidecar.value("specdecode_invalid_windows_total", reason="negative")
                ratio = sidecar.value("specdecode_acceptance_ratio", model_name="tiny")
            assert manifest.read_text() == LIST_MANIFEST  # not a byte written
            assert decisions(sidecar, "low_acceptance") == 0
            (model,) = report["models"]
            assert model["verdict"] == "invalid" and model["invalid"]["reason"] == "negative"
            assert model["acceptance_ratio"] is None
            assert invalid is not None and invalid >= 10
            assert ratio is None  # not exported
            assert sidecar.log().count("is invalid (negative") == 1  # one episode, logged once

            # The control: the same loop on low numbers an engine can write turns speculation off.
            with growing(replay, low_but_possible):
                wait_until(lambda: not ManifestActuator(manifest, container="vllm").read().speculation, 30, sidecar.log)
    view = ManifestActuator(manifest, container="vllm").read()
    assert view.record.reason == "low_acceptance"
