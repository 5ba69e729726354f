"""Deployments the adapter tests act on: speculation as list items, and as one ``sh -c`` string."""

from __future__ import annotations

from typing import Any

NAMESPACE = "serving"
NAME = "llm"
SPEC_CONFIG = '{"method": "draft_model", "model": "/models/draft", "num_speculative_tokens": 4}'

LIST_ARGS = [
    "--model",
    "/models/target",
    "--speculative-config",
    SPEC_CONFIG,
    "--per-request-spec-decode-metrics=summary",
    "--max-model-len",
    "1024",
]
SHELL_SCRIPT = (
    "exec python -m vllm.entrypoints.openai.api_server --model /models/target \\\n"
    "  --speculative-model=/models/draft --num-speculative-tokens 5 \\\n"
    "  --port 8000"
)


def deployment(
    *, args: list[str] | None = None, command: list[str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    vllm: dict[str, Any] = {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}
    if command is not None:
        vllm["command"] = list(command)
    if args is not None:
        vllm["args"] = list(args)
    meta: dict[str, Any] = {"name": NAME, "namespace": NAMESPACE, "labels": {"app": NAME}}
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "containers": [
                        # Another container that happens to use one of the flag names: never ours to touch.
                        {"name": "sidecar", "image": "spec-sidecar:dev", "args": ["run", "--spec-tokens", "3"]},
                        vllm,
                    ]
                },
            },
        },
    }


def list_deployment(**kwargs: Any) -> dict[str, Any]:
    return deployment(args=LIST_ARGS, **kwargs)


def shell_deployment(**kwargs: Any) -> dict[str, Any]:
    return deployment(command=["/bin/sh", "-c"], args=[SHELL_SCRIPT], **kwargs)


def vllm_container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "vllm")
