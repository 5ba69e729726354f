"""A Deployment manifest on disk, as the manifest actuator's tests write and read it back."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from sidecar.core import annotations as ann

LIST_MANIFEST = """\
# The serving stack. Keep this comment.
apiVersion: v1
kind: ConfigMap
metadata:
  name: llm-config   # a trailing comment
data:
  note: "unrelated: --spec-tokens 3"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llm
  annotations:
    team: ml
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.11.0
          args:
            - --model
            - /models/target      # the target model
            # speculation: a small draft model
            - --speculative-config
            - '{"method": "draft_model", "model": "/models/draft", "num_speculative_tokens": 4}'
            - --per-request-spec-decode-metrics=summary
            - --max-model-len
            - "1024"
        - name: sidecar
          image: spec-sidecar:dev
          args: [run, --spec-tokens, "3"]
"""


def without_our_annotations(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if ann.PREFIX not in line)


def load_all(path: Path) -> list[dict[str, object]]:
    return list(YAML(typ="safe").load_all(path.read_text()))
