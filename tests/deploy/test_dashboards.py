"""The Grafana dashboards: generated from code, committed, valid against Grafana's own schema, complete.

Validation: the committed JSON becomes a TypeScript constant typed with @grafana/schema's `Dashboard` and each
panel with its plugin's own `Options`/`FieldConfig` types, then `tsc --noEmit --strict` must accept it (excess
property checks reject unknown or misspelled fields; wrong value types and enum values fail too). It runs once
per Grafana major the dashboard is meant for (the newest two; tooling.GRAFANA_MAJORS). One shape is declared
here because @grafana/schema leaves data source queries open: the Prometheus query's fields (`expr`,
`legendFormat`, ...), used by the panels' targets and by the annotations' `target`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from grafana import generate
from tests.deploy.tooling import DASHBOARDS, GRAFANA_MAJORS, typescript_check

SCHEMA = "@grafana/schema/dist/esm/raw/composable"
# panel type -> (alias, module with its Options, the type of its fieldConfig.defaults.custom)
PANEL_TYPES = {
    "timeseries": ("TimeSeries", f"{SCHEMA}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", "FieldConfig"),
    "heatmap": ("Heatmap", f"{SCHEMA}/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen", "FieldConfig"),
    # the stat panel has no custom field config
    "stat": ("Stat", f"{SCHEMA}/stat/panelcfg/x/StatPanelCfg_types.gen", None),
    "state-timeline": (
        "StateTimeline",
        f"{SCHEMA}/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen",
        "FieldConfig",
    ),
}
PRELUDE = """
import type {
  AnnotationQuery, Dashboard, DataQuery, FieldConfig, FieldConfigSource, Panel, RowPanel,
} from "@grafana/schema";
__IMPORTS__

// JSON carries enum values as plain strings: accept each string enum's literal values, nothing else.
type Loose<T> = T extends string ? `${T}`
  : T extends readonly (infer U)[] ? Loose<U>[]
  : T extends object ? { [K in keyof T]: Loose<T[K]> }
  : T;
// The Prometheus data source's query fields (the schema leaves data source queries open); annotations carry one
// as their `target`.
interface PromQuery extends DataQuery {
  expr: string; legendFormat?: string; range?: boolean; instant?: boolean; exemplar?: boolean;
  format?: "time_series" | "table" | "heatmap"; interval?: string; intervalFactor?: number;
  editorMode?: "code" | "builder";
}
type Kind<T extends string, O, F> = Omit<Panel, "type" | "options" | "fieldConfig" | "targets"> & {
  type: T;
  options: O;
  targets: PromQuery[];
  fieldConfig?: Omit<FieldConfigSource, "defaults"> & { defaults: Omit<FieldConfig, "custom"> & { custom?: F } };
};
type AnyPanel = RowPanel | __KINDS__;
type Board = Omit<Dashboard, "annotations" | "panels"> & {
  annotations: { list: AnnotationQuery<PromQuery>[] };
  panels: AnyPanel[];
};
"""


def _typescript(dashboard: object) -> str:
    imports = "\n".join(f'import type * as {alias} from "{module}";' for alias, module, _ in PANEL_TYPES.values())
    kinds = " | ".join(
        f'Kind<"{t}", {a}.Options, {f"{a}.{custom}" if custom else "Record<string, never>"}>'
        for t, (a, _, custom) in PANEL_TYPES.items()
    )
    prelude = PRELUDE.replace("__IMPORTS__", imports).replace("__KINDS__", kinds)
    return f"{prelude}\nexport const dashboard: Loose<Board> = {json.dumps(dashboard, indent=2)};\n"


def _committed() -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_regenerating_the_dashboards_gives_the_committed_json() -> None:
    rendered = generate.rendered()
    assert sorted(rendered) == sorted(_committed())
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run python -m grafana.generate"
    assert generate.main(["--check"]) == 0


def _check(dashboard: object, major: str, workdir: Path) -> Any:
    return typescript_check(workdir, {"dashboard.ts": _typescript(dashboard)}, node_modules=f"grafana_schema_{major}")


@pytest.mark.parametrize("major", GRAFANA_MAJORS)
@pytest.mark.parametrize("name", sorted(_committed()))
def test_committed_dashboard_type_checks_against_grafanas_schema(name: str, major: str, tmp_path: Path) -> None:
    result = _check(_committed()[name], major, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _annotation(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in dashboard["annotations"]["list"] if a["name"] == name)


def _legacy_annotation(dashboard: dict[str, Any]) -> None:
    """The form Grafana stored before annotation queries moved under `target` (the SDK's `.expr()`)."""
    annotation = _annotation(dashboard, "Toggles")
    annotation["expr"] = annotation.pop("target")["expr"]


@pytest.mark.parametrize(
    ("break_it", "complaint"),
    [
        (lambda d: d["panels"][1]["options"]["legend"].update(placment="bottom"), "placment"),
        (lambda d: d["panels"][1]["options"]["tooltip"].update(mode="sometimes"), "sometimes"),
        (
            lambda d: d["panels"][1]["fieldConfig"]["defaults"]["custom"].update(lineWidth="2"),
            "'string' is not assignable to type 'number'",
        ),
        (lambda d: d.update(refresh=30), "'number' is not assignable to type 'string'"),
        (_legacy_annotation, "'\"expr\"' does not exist in type"),
        (lambda d: _annotation(d, "Toggles")["target"].pop("expr"), "Property 'expr' is missing"),
    ],
)
@pytest.mark.parametrize("major", GRAFANA_MAJORS)
def test_the_schema_check_rejects_a_broken_dashboard(break_it: Any, complaint: str, major: str, tmp_path: Path) -> None:
    dashboard = _committed()["spec-sidecar.json"]
    assert dashboard["panels"][1]["type"] == "timeseries"
    break_it(dashboard)
    result = _check(dashboard, major, tmp_path)
    assert result.returncode != 0
    assert complaint in result.stdout


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def _panel_using(dashboard: dict[str, Any], metric: str) -> dict[str, Any]:
    found = [p for p in _panels(dashboard) if any(re.search(rf"\b{metric}\b", e) for e in _exprs(p))]
    assert found, f"no panel queries {metric}"
    return found[0]


def _threshold_values(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [s["value"] for s in steps if s["value"] is not None]


def test_acceptance_panel_draws_the_disable_threshold_and_keep_line() -> None:
    panel = _panel_using(_committed()["spec-sidecar.json"], "specdecode_acceptance_ratio")
    assert _threshold_values(panel) == [0.5, 0.65]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_mean_acceptance_length_is_drawn_against_break_even() -> None:
    panel = _panel_using(_committed()["spec-sidecar.json"], "specdecode_mean_acceptance_length")
    assert any("specdecode_breakeven_acceptance_length" in e for e in _exprs(panel))


def test_measured_speedup_is_drawn_with_its_interval_and_the_break_even_beside_acceptance() -> None:
    dashboard = _committed()["spec-sidecar.json"]
    measured = _panel_using(dashboard, "specdecode_measured_speedup")
    exprs = _exprs(measured)
    assert any("specdecode_measured_speedup_low" in e for e in exprs)
    assert any("specdecode_measured_speedup_high" in e for e in exprs)
    acceptance = _panel_using(dashboard, "specdecode_acceptance_ratio")
    assert any("specdecode_measured_breakeven_acceptance_ratio" in e for e in _exprs(acceptance))
    expected = _panel_using(dashboard, "specdecode_expected_speedup")
    assert "modelled" in expected["title"] and "upper bound" in expected["description"]


def test_per_temperature_heatmap_repeats_per_bucket_over_the_tap_histogram() -> None:
    dashboard = _committed()["spec-sidecar.json"]
    panel = _panel_using(dashboard, "specdecode_request_acceptance_ratio_bucket")
    assert panel["type"] == "heatmap"
    assert panel["repeat"] == "temperature_bucket"
    assert panel["targets"][0]["format"] == "heatmap"
    assert panel["options"]["calculate"] is False
    quantiles = _panel_using(dashboard, "specdecode_bucket_acceptance_quantile")
    assert "P{{quantile}}" in quantiles["targets"][0]["legendFormat"]


def test_latency_panels_show_p50_p95_p99_for_ttft_and_tpot_with_baseline_and_divergence() -> None:
    dashboard = _committed()["spec-sidecar.json"]
    latency = [p for p in _panels(dashboard) if any("specdecode_latency_seconds" in e for e in _exprs(p))]
    metrics = {re.search(r'metric="(\w+)"', e).group(1) for p in latency for e in _exprs(p)}  # type: ignore[union-attr]
    assert metrics == {"ttft", "tpot"}
    assert all('quantile=~"0.5|0.95|0.99"' in e for p in latency for e in _exprs(p))
    spread = _panel_using(dashboard, "specdecode_latency_p99_p50_ratio_baseline")
    assert any("specdecode_latency_p99_p50_ratio{" in e for e in _exprs(spread))
    assert _threshold_values(_panel_using(dashboard, "specdecode_latency_divergence")) == [1.5]


def test_load_health_and_control_panels_are_present() -> None:
    dashboard = _committed()["spec-sidecar.json"]
    for metric in (
        "specdecode_kv_cache_usage_ratio",
        "specdecode_generation_tokens_per_second",
        "specdecode_target_up",
        "specdecode_scrapes_total",
        "specdecode_decision_state",
        "specdecode_toggles_total",
        "specdecode_actuator_errors_total",
        "specdecode_tap_errors_total",
        "specdecode_speculation_enabled",
        "specdecode_position_acceptance_ratio",
    ):
        _panel_using(dashboard, metric)


def test_speculation_off_and_toggles_are_annotations() -> None:
    annotations = {a["name"]: a for a in _committed()["spec-sidecar.json"]["annotations"]["list"]}
    assert "specdecode_speculation_enabled" in annotations["Speculation off"]["target"]["expr"]
    assert "specdecode_toggles_total" in annotations["Toggles"]["target"]["expr"]
    assert all(a["enable"] for a in annotations.values())
    # the current form only: a leftover top-level query would be the legacy one Grafana migrates on load
    assert not any("expr" in a for a in annotations.values())


def test_variables_for_namespace_pod_and_model_narrow_every_query() -> None:
    dashboard = _committed()["spec-sidecar.json"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[:4] == ["datasource", "namespace", "pod", "model"]
    for panel in _panels(dashboard):
        for expr in _exprs(panel):
            assert 'namespace=~"$namespace"' in expr and 'pod=~"$pod"' in expr, (panel["title"], expr)
        assert panel["datasource"]["uid"] == "${datasource}"


def test_the_right_sized_k_is_drawn_against_the_running_k_with_its_range() -> None:
    panel = _panel_using(_committed()["spec-sidecar.json"], "specdecode_recommended_num_speculative_tokens")
    exprs = _exprs(panel)
    assert any(e.startswith("specdecode_num_speculative_tokens{") for e in exprs)
    assert any("specdecode_recommended_num_speculative_tokens_low" in e for e in exprs)
    assert any("specdecode_recommended_num_speculative_tokens_high" in e for e in exprs)


def test_the_speedup_per_load_band_is_drawn_per_band_with_its_interval_against_one() -> None:
    panel = _panel_using(_committed()["spec-sidecar.json"], "specdecode_load_band_speedup")
    exprs = _exprs(panel)
    assert any("specdecode_load_band_speedup_low" in e for e in exprs)
    assert any("specdecode_load_band_speedup_high" in e for e in exprs)
    assert all("{{band}}" in t["legendFormat"] for t in panel["targets"])
    assert _threshold_values(panel) == [1.0]
