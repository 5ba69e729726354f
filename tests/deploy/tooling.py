"""The real deploy tools (helm, kubernetes-validate, tsc, promtool, hadolint) as the tests call them.

scripts/install-tools.sh installs them (cached) and prints where they are; the tests ask it, so a plain
`pytest tests/deploy` works on a fresh machine too (the first run installs, later runs return at once).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "spec-sidecar"
RULES = ROOT / "deploy" / "alerts" / "spec-sidecar-rules.yaml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
METRICS_DOC = ROOT / "docs" / "metrics.md"

Manifest = dict[str, Any]


@functools.cache
def tools() -> dict[str, Path]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-tools.sh")], check=True, capture_output=True, text=True
    ).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: Path(path) for name, path in found.items()}


def run(cmd: Sequence[str | Path], *, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tools()["helm"], *args], check=check)


def render(*value_args: str | Path, release: str = "demo", namespace: str = "inference") -> str:
    return helm("template", release, CHART, "--namespace", namespace, *value_args).stdout


def documents(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(deployment: Manifest, name: str) -> Manifest:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


def walk_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)


SPECDECODE_NAME = re.compile(r"\bspecdecode_[a-z0-9_]+")
DOC_ROW = re.compile(r"^\| `(specdecode_[a-z0-9_]+)` \| (gauge|counter|histogram) \|", re.MULTILINE)


def exported_families() -> dict[str, str]:
    """Metric family name -> type, from docs/metrics.md (the lead's test keeps it equal to the exporter)."""
    return {m.group(1): m.group(2) for m in DOC_ROW.finditer(METRICS_DOC.read_text())}


def exported_sample_names() -> set[str]:
    """Every sample name a scrape of the sidecar can carry (histograms expose _bucket/_sum/_count)."""
    names: set[str] = set()
    for family, kind in exported_families().items():
        if kind == "histogram":
            names |= {family + "_bucket", family + "_sum", family + "_count"}
        else:
            names.add(family)
    return names


def used_metric_names(text: str) -> set[str]:
    return set(SPECDECODE_NAME.findall(text))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


# Grafana majors whose @grafana/schema scripts/install-tools.sh installs (newest first); the dashboard is meant
# for these and type-checked against each.
GRAFANA_MAJORS = ("13", "12")


def typescript_check(
    workdir: Path, sources: dict[str, str], *, node_modules: str = "node_modules"
) -> subprocess.CompletedProcess[str]:
    """`tsc --noEmit --strict` over the given .ts sources, with one of the cached node_modules in reach.

    node_modules names the folder in tools(): "node_modules" (the operator types) or "grafana_schema_<major>".
    """
    node_modules_path = tools()[node_modules]
    (workdir / "node_modules").symlink_to(node_modules_path, target_is_directory=True)
    for name, text in sources.items():
        (workdir / name).write_text(text)
    tsconfig = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "skipLibCheck": True,
            "types": [],
        },
        "files": sorted(sources),
    }
    (workdir / "tsconfig.json").write_text(json.dumps(tsconfig))
    return run([tools()["tsc"], "-p", workdir / "tsconfig.json"], check=False, cwd=workdir)


def node_script(workdir: Path, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an .mjs script next to the cached node_modules (ESM resolves imports from the script's folder)."""
    if not (workdir / "node_modules").exists():
        (workdir / "node_modules").symlink_to(tools()["node_modules"], target_is_directory=True)
    local = workdir / script.name
    local.write_text(script.read_text())
    return run(["node", local, *args], check=False, cwd=workdir)
