"""A toggle writes no credential of the engine's args to annotations, Events or logs, on either actuator, and
`enable` still gives back the original args byte for byte (taking the credentials from the live spec)."""

from __future__ import annotations

import json
import logging
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
from sidecar.core.policy import Action, PolicyConfig
from tests.kubeapi.manifests import NAME, NAMESPACE, deployment, vllm_container
from tests.kubeapi.server import KubeAPI, kube_api
from tests.support.stats_builders import stats

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
