"""Generate docs/configuration.md and the Helm chart's `sidecar.config` schema from the sidecar's Settings
(one field = one flag = one environment variable = one chart value).

    python scripts/gen_config_docs.py          # write both
    python scripts/gen_config_docs.py --check  # exit 1 if either committed file is stale
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from sidecar.settings import SECTIONS, Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
CHART_SCHEMA = ROOT / "deploy" / "helm" / "spec-sidecar" / "values.schema.json"
# helm --set passes 0.45 as a string: numbers may come as numeric strings.
NUMERIC_STRING = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
# Set by the Helm chart from other values (the pod's own addresses and the Deployment it is part of).
CHART_SETS = {"vllm_url", "listen", "metrics_listen", "deployment", "namespace", "container", "deployment_file"}

HEADER = """# Configuration reference

Generated from `sidecar/settings.py` by `scripts/gen_config_docs.py`; `tests/deploy/test_config_docs.py` fails
when this file is stale. Do not edit by hand.

Every setting is a command-line flag of `spec-sidecar run` and an environment variable; a flag beats the
environment, which beats the default. In the Helm chart, set them under `sidecar.config` by their name
(`sidecar.config.threshold: 0.45` becomes `SPEC_SIDECAR_THRESHOLD=0.45`); the chart sets the ones marked
"chart" itself. `spec-sidecar run --help` lists the flags in the same sections; `status`, `enable` and
`disable` take the target's section alone.
"""
TABLE_HEAD = """| setting | flag | environment variable | type | default | chart | description |
|---|---|---|---|---|---|---|
"""


def type_name(annotation: object) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in parts) + " (optional)"
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is dict:
        return "list of key=value"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(annotation, str(annotation)) if isinstance(annotation, type) else str(annotation)


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == {}:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def row(name: str, field: FieldInfo) -> str:
    flag = "--" + name.replace("_", "-")
    env = "SPEC_SIDECAR_" + name.upper()
    chart = "chart" if name in CHART_SETS else f"`sidecar.config.{name}`"
    description = (field.description or "").replace("|", "\\|").replace("\n", " ")
    annotation = field.annotation
    return (
        f"| `{name}` | `{flag}` | `{env}` | {type_name(annotation)} | {default_text(field)} | {chart} | {description} |"
    )


def render() -> str:
    """One section, with its own table, per section of Settings, in the order of the flags."""
    parts = [HEADER]
    for section in SECTIONS:
        title = section.__name__.removesuffix("Settings")
        about = inspect.cleandoc(section.__doc__ or "")
        rows = "\n".join(row(name, field) for name, field in section.model_fields.items())
        parts.append(f"\n## {title}\n\n{about}\n\n{TABLE_HEAD}{rows}\n")
    return "".join(parts)


def config_schema() -> dict[str, object]:
    """The chart's sidecar.config: every setting the chart does not set itself, typed and bounded as in Settings."""
    properties = {
        name: chart_property(prop)
        for name, prop in Settings.model_json_schema()["properties"].items()
        if name not in CHART_SETS
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Settings of `spec-sidecar run` by field name (docs/configuration.md); "
        "each becomes SPEC_SIDECAR_<NAME>.",
        "properties": properties,
    }


def chart_property(setting: dict[str, typing.Any]) -> dict[str, typing.Any]:
    prop = {k: v for k, v in setting.items() if k not in {"title", "default"}}
    if "anyOf" in prop:  # optional: the chart leaves it unset instead of passing null
        prop = {**next(p for p in prop.pop("anyOf") if p["type"] != "null"), **prop}
    if prop["type"] == "object":  # key=value pairs travel as one string
        return {"type": "string", "description": prop["description"]}
    if prop["type"] in {"number", "integer"}:
        description = prop.pop("description")
        return {"description": description, "anyOf": [prop, NUMERIC_STRING]}
    return prop


def chart_schema() -> str:
    schema = json.loads(CHART_SCHEMA.read_text())
    schema["properties"]["sidecar"]["properties"]["config"] = config_schema()
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with docs/configuration.md, write nothing")
    args = parser.parse_args(argv)
    wanted = {DOC: render(), CHART_SCHEMA: chart_schema()}
    if args.check:
        stale = [str(path.relative_to(ROOT)) for path, text in wanted.items() if path.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}: run python scripts/gen_config_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
