"""A toggle writes no credential of the engine's args to annotations, Events or logs, on either actuator, and
`enable` still gives back the original args byte for byte (taking the credentials from the live spec). A record an
older sidecar wrote with the credentials in it (version 1) is rewritten without them, once, by the next sidecar."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from sidecar.adapters.kube.actuator import KubeActuator
from sidecar.adapters.kube.client import RetryPolicy, api_client
from sidecar.adapters.manifest import ManifestActuator
from sidecar.control.loop import Controller
from sidecar.core import annotations as ann
from sidecar.core import specargs
from sidecar.core.policy import Action, PolicyConfig
from tests.kubeapi.manifests import NAME, NAMESPACE, deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api
from tests.support.kube_actuators import actuator_on
from tests.support.stats_builders import stats

ROOT = Path(__file__).parents[3]
T0 = 1_800_000_000.0
KEY, HF = "sk-live-0123456789abcdef", "hf_topsecretToken"
ARGS = [
    "--model",
    "/models/target",
    "--api-key",
    KEY,
    "--speculative-config",
    '{"method": "ngram", "num_speculative_tokens": 3}',
    f"--hf-token={HF}",
    "--max-model-len",
    "1024",
]
MANIFEST = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llm
spec:
  template:
    spec:
      containers:
        - name: vllm
          args:
            - --model
            - /models/target
            - --api-key
            - {KEY}   # from a secret in real life; here, the worst case
            - --speculative-config
            - '{{"method": "ngram", "num_speculative_tokens": 3}}'
            - --hf-token={HF}
            - --max-model-len
            - "1024"
"""


def test_the_controller_disables_a_manifest_without_writing_or_logging_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(MANIFEST)
    controller = Controller(ManifestActuator(path, container="vllm", clock=lambda: T0), PolicyConfig(), read_every=0)
    with caplog.at_level(logging.DEBUG):
        decisions = [controller.step(stats(0.3), T0 + 60 * i) for i in range(3)]
    assert [d.action if d else None for d in decisions] == [Action.NONE, Action.NONE, Action.DISABLE]
    text = path.read_text()
    notes = json.dumps(YAML(typ="safe").load(text)["metadata"]["annotations"])
    assert ann.REMOVED_ARGS in notes and KEY not in notes and HF not in notes
    assert text.count(KEY) == 1  # only in the live args: the engine still needs its key
    assert caplog.records and not [r for r in caplog.records if KEY in r.getMessage() or HF in r.getMessage()]

    result = ManifestActuator(path, container="vllm", clock=lambda: T0).enable("manual")
    assert result.changed
    assert ManifestActuator(path, container="vllm").read().args == ARGS
    assert "--speculative-config" in path.read_text() and ann.REMOVED_ARGS not in path.read_text()


@pytest.fixture
def server() -> Iterator[KubeAPI]:
    with kube_api() as api:
        yield api


def test_the_kube_actuator_writes_no_key_to_annotations_or_events_and_restores_the_args(
    server: KubeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_deployment(deployment(args=ARGS))
    act = KubeActuator(
        api_client(host=server.url),
        namespace=NAMESPACE,
        deployment=NAME,
        container="vllm",
        retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, timeout=(1.0, 0.5)),
        clock=lambda: T0,
    )
    with caplog.at_level(logging.DEBUG):
        assert act.disable("low_acceptance").changed
    stored: dict[str, Any] = server.deployment(NAMESPACE, NAME)
    notes = json.dumps(stored["metadata"]["annotations"])
    assert ann.REMOVED_ARGS in notes and KEY not in notes and HF not in notes
    assert KEY not in json.dumps(server.events) and HF not in json.dumps(server.events)
    assert not [r for r in caplog.records if KEY in r.getMessage() or HF in r.getMessage()]
    server.complete_rollout(NAMESPACE, NAME)
    assert act.enable("manual").changed
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == ARGS


# --- records of version 1, written by older sidecars with the credentials in them ------------------------------


def older_sidecars_record() -> tuple[list[str], dict[str, str]]:
    """The args left after an older sidecar's disable, and the annotations it wrote: a version 1 record, holding
    the args after the removal as they were (the key and the token included)."""
    removal = specargs.remove(None, ARGS, secret_flags=())
    assert removal.args is not None
    old = {**removal.record, "version": 1}
    written = ann.ControlRecord().toggled(T0 - 3600, "disable", ann.By.SIDECAR, "low_acceptance", old)
    notes = {k: v for k, v in ann.to_annotations(written).items() if v is not None}
    assert KEY in notes[ann.REMOVED_ARGS] and HF in notes[ann.REMOVED_ARGS]
    return removal.args, notes


def redaction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if KEY in line or HF in line], lines
    return [line for line in lines if '"action": "redact"' in line]


def control_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli.control_commands", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


# Longer reads than FAST: the real server's re-run of these tests may take seconds to answer a PATCH.
PATIENT = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, timeout=(5.0, 5.0))


def test_the_next_sidecar_rewrites_an_older_sidecars_record_in_a_manifest_once_and_enable_restores_the_args(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    after, notes = older_sidecars_record()
    path = tmp_path / "deploy.yaml"
    with path.open("w") as handle:
        YAML().dump(deployment(args=after, annotations=notes), handle)
    controller = Controller(ManifestActuator(path, container="vllm", clock=lambda: T0), PolicyConfig(), read_every=0)
    with caplog.at_level(logging.DEBUG):
        decisions = [controller.step(None, T0 + 60 * i) for i in range(3)]
    assert [d.action if d else None for d in decisions] == [Action.NONE] * 3  # nothing decided, only the rewrite

    text = path.read_text()
    stored = YAML(typ="safe").load(text)
    assert json.loads(stored["metadata"]["annotations"][ann.REMOVED_ARGS]) == specargs.remove(None, ARGS).record
    assert text.count(KEY) == 1 and text.count(HF) == 1  # only in the live args: the engine still needs them
    assert vllm_container(stored)["args"] == after
    assert len(redaction_lines(caplog)) == 1  # once: the rewritten record needs no second rewrite

    on = control_cli("enable", "--deployment-file", str(path), "--container", "vllm")
    assert on.returncode == 0 and on.stdout.startswith("changed"), on.stdout + on.stderr
    assert vllm_container(YAML(typ="safe").load(path.read_text()))["args"] == ARGS


def test_the_next_sidecar_rewrites_an_older_sidecars_record_on_a_deployment_once_with_an_event(
    server: KubeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    after, notes = older_sidecars_record()
    server.add_deployment(deployment(args=after, annotations=notes))
    act = actuator_on(server.url, retry=PATIENT)
    controller = Controller(act, PolicyConfig(), read_every=0)
    with caplog.at_level(logging.DEBUG):
        decisions = [controller.step(None, T0 + 60 * i) for i in range(3)]
    assert [d.action if d else None for d in decisions] == [Action.NONE] * 3

    stored: dict[str, Any] = server.deployment(NAMESPACE, NAME)
    annotations = stored["metadata"]["annotations"]
    assert json.loads(annotations[ann.REMOVED_ARGS]) == specargs.remove(None, ARGS).record
    assert KEY not in json.dumps(annotations) and HF not in json.dumps(annotations)
    assert vllm_container(stored)["args"] == after  # the args are not touched: no rollout
    assert {k: annotations[k] for k in notes if k != ann.REMOVED_ARGS} == {
        k: v for k, v in notes.items() if k != ann.REMOVED_ARGS
    }
    events = [e for e in server.events if e["reason"] == "RemovalRecordRedacted"]
    assert [e["type"] for e in events] == ["Normal"]
    assert ann.REMOVED_ARGS in events[0]["message"]
    assert KEY not in json.dumps(server.events) and HF not in json.dumps(server.events)
    assert len(redaction_lines(caplog)) == 1

    target = ["--deployment", NAME, "--namespace", NAMESPACE, "--container", "vllm", "--kube-host", server.url]
    on = control_cli("enable", *target)
    assert on.returncode == 0 and on.stdout.startswith("changed"), on.stdout + on.stderr
    assert vllm_container(server.deployment(NAMESPACE, NAME))["args"] == ARGS


def test_a_dry_run_does_not_rewrite_an_older_sidecars_record_and_says_so_once(
    server: KubeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    after, notes = older_sidecars_record()
    server.add_deployment(deployment(args=after, annotations=notes))
    act = actuator_on(server.url, retry=PATIENT)
    controller = Controller(act, PolicyConfig(dry_run=True), read_every=0)
    with caplog.at_level(logging.DEBUG):
        for i in range(3):
            controller.step(None, T0 + 60 * i)
    assert server.deployment(NAMESPACE, NAME)["metadata"]["annotations"][ann.REMOVED_ARGS] == notes[ann.REMOVED_ARGS]
    assert not [e for e in server.events if e["reason"] == "RemovalRecordRedacted"]
    warned = [r.getMessage() for r in caplog.records if "dry run does not rewrite" in r.getMessage()]
    assert len(warned) == 1 and KEY not in warned[0]
    assert not redaction_lines(caplog)
