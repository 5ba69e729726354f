"""``spec-sidecar inject``: Kubernetes YAML in, the same YAML with the sidecar beside vLLM out.

The transformation is sidecar.core.injection; this module reads the text (a file or stdin), keeps its comments,
key order and quoting through ruamel.yaml's round-trip mode, and writes the result to stdout, so it fits in a
pipe: ``kubectl get deploy vllm -o yaml | spec-sidecar inject | kubectl apply -f -``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import MutableMapping, MutableSequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import ScalarString

from sidecar import __version__
from sidecar.adapters.manifest import round_trip_yaml, string_scalar
from sidecar.core.injection import InjectionError, InjectOptions, inject

# Settings the sidecar's args already carry (from the vLLM container and the workload): not settable twice.
DERIVED = frozenset({"vllm_url", "listen", "metrics_listen", "deployment", "namespace", "container", "deployment_file"})

DESCRIPTION = (
    "Add the spec-sidecar container beside the vLLM container of a Deployment you already run (your own "
    "manifests, vLLM's production-stack chart, llm-d, a KServe ServingRuntime, a GitOps repository). It reads "
    "Kubernetes YAML from a file or stdin (several documents, a List, or what `kubectl get deploy NAME -o yaml` "
    "prints) and writes the same YAML to stdout with the sidecar added as the spec-sidecar Helm chart adds it: "
    "args taken from the vLLM container (its port) and the Deployment (its name and namespace), probes, "
    "resources, a locked-down security context, and an API token for the sidecar container alone. Comments and "
    "key order are kept; running it twice gives the same YAML. Use it in a pipe between kubectl get and kubectl "
    "apply, as a Helm post-renderer, or as a kustomize step (docs/adopt.md has a recipe for each)."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "inject",
        help="Add the sidecar to the vLLM Deployment in some Kubernetes YAML (kubectl get ... | inject | apply).",
        description=DESCRIPTION,
    )
    p.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="Kubernetes YAML to read ('-' or none = stdin)."
    )
    p.add_argument(
        "--image",
        default=f"spec-sidecar:{__version__}",
        help="The sidecar image, as your nodes pull it (default %(default)s).",
    )
    p.add_argument("--container", metavar="NAME", help="The vLLM container's name, when it is not found by its "
                   "image (vllm/vllm-openai, ...) or command (vllm serve), or when a pod has two.")  # fmt: skip
    p.add_argument("--workload", metavar="NAME", help="Only the Deployment (or other workload) of this name.")
    p.add_argument(
        "--namespace", metavar="NS", help="The Deployment's namespace when the YAML has none (kustomize bases)."
    )
    p.add_argument(
        "--service-account",
        metavar="NAME",
        help="The ServiceAccount the pod runs as. Default: the pod's own if it has one, else DEPLOYMENT-spec-sidecar.",
    )
    p.add_argument(
        "--measure-only",
        action="store_true",
        help="Measure and export only: the sidecar never changes the Deployment, and gets no API token.",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A setting of `spec-sidecar run` by its name (e.g. dry_run=true, threshold=0.5; see `run --help`), "
        "set as the sidecar's environment variable SPEC_SIDECAR_NAME. Repeat for more.",
    )
    p.add_argument(
        "--with-rbac",
        action="store_true",
        help="Also write the Role and RoleBinding the sidecar needs on this one Deployment (and its "
        "ServiceAccount when it is DEPLOYMENT-spec-sidecar).",
    )
    p.add_argument(
        "--with-service",
        action="store_true",
        help="Also write a Service DEPLOYMENT-spec-sidecar: port 8000 through the tap (per-request acceptance "
        "by temperature), 8002 the sidecar's metrics, 8001 vLLM's own.",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sidecar.cli.flags import UsageError

    options = InjectOptions(
        image=args.image,
        container=args.container,
        workload=args.workload,
        namespace=args.namespace,
        service_account=args.service_account,
        measure_only=args.measure_only,
        config=tuple(_config(item, UsageError) for item in args.config),
        with_rbac=args.with_rbac,
        with_service=args.with_service,
    )
    text = _read(args.file, UsageError)
    try:
        out, notes = inject_text(text, options)
    except InjectionError as exc:
        raise UsageError(f"{_source(args.file)}: {exc}") from exc
    except YAMLError as exc:
        where = " ".join(str(exc).split())
        raise UsageError(f"{_source(args.file)}: not YAML ({where}); give it Kubernetes YAML") from exc
    sys.stdout.write(out)
    for note in notes:
        print(f"spec-sidecar inject: note: {note}", file=sys.stderr)
    return 0


def inject_text(text: str, options: InjectOptions) -> tuple[str, list[str]]:
    """The whole round trip on text: parse, inject, write back in the input's own layout."""
    yaml = round_trip_yaml(text)
    docs: list[Any] = [d for d in yaml.load_all(text) if d is not None]
    outcome = inject(docs, options)
    for doc in docs:
        _quote_for_yaml11(doc)
    out = io.StringIO()
    yaml.dump_all(docs, out)
    return out.getvalue(), outcome.notes


def _quote_for_yaml11(node: Any) -> None:
    """kubectl reads YAML 1.1, where an unquoted on/yes/off is a boolean: quote the strings it would misread."""
    if isinstance(node, MutableMapping):
        for key, value in node.items():
            if type(value) is str:
                node[key] = string_scalar(value)
            else:
                _quote_for_yaml11(value)
    elif isinstance(node, MutableSequence):
        for i, value in enumerate(node):
            if type(value) is str:
                node[i] = string_scalar(value)
            elif not isinstance(value, ScalarString):
                _quote_for_yaml11(value)


def _config(item: str, error: type[Exception]) -> tuple[str, str]:
    from sidecar.settings import Settings

    name, sep, value = item.partition("=")
    name = name.strip().replace("-", "_").lower()
    if not sep or name not in Settings.model_fields:
        raise error(
            f"--config {item}: expected NAME=VALUE with NAME a setting of `spec-sidecar run` (e.g. dry_run=true)"
        )
    if name in DERIVED:
        raise error(f"--config {item}: inject sets {name} itself from the vLLM container and the Deployment")
    try:
        Settings(**{name: value})  # type: ignore[arg-type]  # pydantic converts and checks the text
    except ValidationError as exc:
        problems = [e for e in exc.errors() if e["loc"] and e["loc"][0] == name]
        if problems:
            raise error(f"--config {item}: {problems[0]['msg'].removeprefix('Value error, ')}") from exc
    return name, value


def _read(source: str, error: type[Exception]) -> str:
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{source}: no such file; give a Kubernetes YAML file, or '-' for stdin") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{source}: {getattr(exc, 'strerror', None) or exc}") from exc


def _source(source: str) -> str:
    return "stdin" if source == "-" else source
