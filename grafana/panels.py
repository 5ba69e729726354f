"""Small builders the spec-sidecar dashboard is made of: queries, panel kinds, thresholds, variables.

Everything goes through grafana-foundation-sdk (the Grafana 11.6 flavour, the newest it has), so the JSON has
the shape Grafana's own schema describes; tests/deploy/test_dashboards.py checks it with tsc against the
@grafana/schema of Grafana 13 and of Grafana 12, the versions the dashboard is meant for.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every query is narrowed by the dashboard variables; tap and latency panels add their own labels.
POD = 'namespace=~"$namespace", pod=~"$pod"'
MODEL = POD + ', model_name=~"$model"'


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE).range()


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=v, color=c) for v, c in steps])
    )


def dashed_threshold_lines() -> common_builders.GraphThresholdsStyleConfig:
    return common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)


def dashed(name_regex: str) -> tuple[dashboard.MatcherConfig, list[dashboard.DynamicConfigValue]]:
    """An override drawing the series whose display name matches as a dashed line (references, not data)."""
    style = {"fill": "dash", "dash": [10, 10]}
    return (
        dashboard.MatcherConfig(id_val="byRegexp", options=name_regex),
        [dashboard.DynamicConfigValue(id_val="custom.lineStyle", value=style)],
    )


def graph(title: str, description: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .line_width(2)
        .fill_opacity(0)
        .span_nulls(False)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def states(
    title: str, description: str, mappings: list[dashboard.ValueMapping], *queries: prometheus.Dataquery
) -> statetimeline.Panel:
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .mappings(mappings)
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .fill_opacity(80)
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(title: str, description: str, q: prometheus.Dataquery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(q)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def bucket_heatmap(title: str, description: str, q: prometheus.Dataquery) -> heatmap.Panel:
    """A heatmap of a Prometheus histogram's bucket increases (the buckets are the rows, no re-bucketing)."""
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(q)
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_models.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
            .reverse(False)
        )
        .y_axis(heatmap.YAxisConfig().unit("percentunit").axis_placement(common.AxisPlacement.LEFT))
        .cell_values(heatmap.CellValues().unit("short"))
        .show_value(common.VisibilityMode.NEVER)
        .mode(common.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
        .show_color_scale(True)
        .show_legend()
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .filter_values(heatmap.FilterValueRange().le(1e-9))
        .exemplars_color("rgba(255,0,255,0.7)")
    )


def on_off() -> list[dashboard.ValueMapping]:
    return [
        dashboard.ValueMap(
            options={
                "0": dashboard.ValueMappingResult(text="off", color="red", index=0),
                "1": dashboard.ValueMappingResult(text="on", color="green", index=1),
            }
        )
    ]


def label_variable(name: str, label: str, query_text: str, *, include_all: bool = True) -> dash.QueryVariable:
    variable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
    )
    if include_all:
        variable = variable.include_all(True).all_value(".*")
    return variable


class _PrometheusAnnotationQuery(dashboard.AnnotationQuery):
    """An annotation whose PromQL is a Prometheus query under `target`.

    That is the form Grafana 12 and 13 store and their schema types (`AnnotationQuery<PromQuery>`). The SDK's
    Grafana 11.6 flavour only offers the legacy top-level `expr`, and types `target` as the built-in Grafana
    annotation's tag filter, so the query is carried here and written in the JSON in its place.
    """

    def __init__(self, name: str, color: str, query: prometheus_models.Dataquery) -> None:
        super().__init__(name=name, datasource=DATASOURCE, enable=True, icon_color=color)
        self.query = query

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload["target"] = self.query
        return payload


class PrometheusAnnotation(cogbuilder.Builder[dashboard.AnnotationQuery]):
    """A dashboard annotation drawn where `expr` has a positive value (Grafana joins neighbouring steps)."""

    def __init__(self, name: str, color: str, expr: str) -> None:
        self._model = _PrometheusAnnotationQuery(name, color, prometheus.Dataquery().expr(expr).ref_id("Anno").build())

    def build(self) -> dashboard.AnnotationQuery:
        return self._model
