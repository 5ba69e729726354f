"""The spec-sidecar dashboard: is speculative decoding paying for itself, per namespace, pod and model?

Rows follow the questions an operator asks in order: does it pay (acceptance against the threshold, L against
break-even), for which temperatures, at what latency cost (P99 against the baseline spread), under what load,
and is the sidecar itself healthy and acting. Speculation off and every toggle are dashboard annotations.
Reference lines mirror the sidecar's defaults (--threshold 0.5, keep 0.65, --min-draft-tokens 200) and the
alert rules (divergence 1.5).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from grafana.panels import (
    DATASOURCE,
    MODEL,
    POD,
    PrometheusAnnotation,
    bucket_heatmap,
    dashed,
    dashed_threshold_lines,
    graph,
    label_variable,
    on_off,
    query,
    single,
    states,
    thresholds,
)

UID = "spec-sidecar"
TAP = MODEL + ', temperature_bucket=~"$temperature_bucket"'
PanelBuilder = cogbuilder.Builder[dashboard.Panel]


def build() -> dashboard.Dashboard:
    board = (
        dash.Dashboard("spec-sidecar: speculative decoding")
        .uid(UID)
        .description("Is speculative decoding paying for itself on this traffic? Metrics exported by spec-sidecar.")
        .tags(["vllm", "speculative-decoding", "spec-sidecar"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for variable in _variables():
        board = board.with_variable(variable)
    for annotation in _annotations():
        board = board.annotation(annotation)
    for row, panels in _rows():
        board = board.with_row(dash.Row(row))
        for panel in panels:
            board = board.with_panel(panel)
    return board.build()


def _variables() -> list[dash.QueryVariable | dash.DatasourceVariable]:
    return [
        dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        label_variable("namespace", "Namespace", "label_values(specdecode_target_up, namespace)"),
        label_variable("pod", "Pod", 'label_values(specdecode_target_up{namespace=~"$namespace"}, pod)'),
        label_variable("model", "Model", f"label_values(specdecode_speculation_enabled{{{POD}}}, model_name)"),
        label_variable(
            "temperature_bucket",
            "Temperature bucket",
            f"label_values(specdecode_request_acceptance_ratio_bucket{{{MODEL}}}, temperature_bucket)",
        ),
    ]


def _annotations() -> list[cogbuilder.Builder[dashboard.AnnotationQuery]]:
    return [
        dash.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(dashboard.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1),
        PrometheusAnnotation(
            "Speculation off", "red", f"min by (namespace, pod) (specdecode_speculation_enabled{{{MODEL}}}) == 0"
        ),
        # The toggle counters start at 0, so changes() sees a sidecar's first toggle. The pod whose sidecar toggled
        # is replaced by the rollout it caused, taking its counter along: the toggle recorded on the target (its
        # timestamp, exported by the next pod's sidecar) marks it too.
        PrometheusAnnotation(
            "Toggles",
            "orange",
            f"sum by (namespace, pod, action, mode) (changes(specdecode_toggles_total{{{POD}}}[2m])) > 0"
            f" or max by (namespace, pod) (specdecode_last_toggle_timestamp_seconds{{{POD}}}) > time() - 120",
        ),
    ]


def _rows() -> list[tuple[str, list[PanelBuilder]]]:
    return [
        ("Does speculation pay?", _pays()),
        ("Per temperature (requests through the tap)", _temperature()),
        ("Latency against the baseline", _latency()),
        ("Load", _load()),
        ("Sidecar health and control", _health()),
    ]


def _pays() -> list[PanelBuilder]:
    return [
        graph(
            "Acceptance ratio",
            "Accepted / draft tokens over the sidecar's window. Below 0.5 (red line) speculation is net-negative"
            " and the sidecar turns it off; from 0.65 (green line) it is a likely win; between, measure P99 under"
            " load. Once this deployment's break-even is measured from its latency (dashed 'measured break-even'),"
            " the sidecar judges against that line instead of 0.5. In fleet mode the break-even is the fleet's,"
            " drawn once, on the pod whose sidecar holds the Lease.",
            query(f"specdecode_acceptance_ratio{{{MODEL}}}", "{{pod}} {{model_name}}"),
            query(
                f"specdecode_measured_breakeven_acceptance_ratio{{{MODEL}}}",
                "measured break-even {{pod}} {{model_name}}",
                "B",
            ),
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.5, "yellow"), (0.65, "green")))
        .thresholds_style(dashed_threshold_lines())
        .with_override(*dashed("^measured break-even.*"))
        .height(8)
        .span(12),
        graph(
            "Mean acceptance length vs break-even",
            "L = 1 + accepted / drafts (tokens per verify step). Speculation pays only while L is above the dashed"
            " break-even 1 + k·c (c = --draft-cost-ratio).",
            query(f"specdecode_mean_acceptance_length{{{MODEL}}}", "L {{pod}} {{model_name}}"),
            query(f"specdecode_breakeven_acceptance_length{{{MODEL}}}", "break-even {{pod}} {{model_name}}", "B"),
        )
        .unit("short")
        .min(1)
        .with_override(*dashed("^break-even.*"))
        .height(8)
        .span(12),
        graph(
            "Per-position acceptance",
            "Accepted at draft position i / drafts (≈ α^(i+1)); position 0 is the estimate of α. A steep fall means"
            " fewer speculative tokens would do.",
            query(f"specdecode_position_acceptance_ratio{{{MODEL}}}", "pos {{position}} {{pod}}"),
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .height(8)
        .span(8),
        single(
            "Expected speedup (modelled)",
            "L / (1 + k·c): modelled walltime speedup. c is configured, assumed from the speculative config, or"
            " unknown (then 0, and this is an upper bound): see specdecode_draft_cost_ratio{source}. The measured"
            " speedup beside it is the number to trust.",
            query(f"specdecode_expected_speedup{{{MODEL}}}", "{{pod}} {{model_name}}"),
        )
        .unit("x")
        .decimals(2)
        .thresholds(thresholds((None, "red"), (1.0, "green")))
        .height(8)
        .span(4),
        graph(
            "Measured speedup (TPOT off / on, matched load)",
            "This deployment's own speedup: geometric-mean TPOT without speculation over TPOT with it, compared"
            " within load bands of running requests, with its 95 % interval (dashed). Below 1, speculation makes"
            " tokens slower here, whatever the acceptance. In fleet mode it is the whole Deployment's, from its"
            " pods' latency summed in Prometheus, shown on the pod whose sidecar holds the Lease.",
            query(f"specdecode_measured_speedup{{{MODEL}}}", "measured {{pod}} {{model_name}}"),
            query(f"specdecode_measured_speedup_low{{{MODEL}}}", "interval low {{pod}} {{model_name}}", "B"),
            query(f"specdecode_measured_speedup_high{{{MODEL}}}", "interval high {{pod}} {{model_name}}", "C"),
        )
        .unit("x")
        .thresholds(thresholds((None, "red"), (1.0, "green")))
        .thresholds_style(dashed_threshold_lines())
        .with_override(*dashed("^interval.*"))
        .height(8)
        .span(12),
        states(
            "Speculation on/off",
            "Whether each engine runs with speculation (its spec-decode series exist).",
            on_off(),
            query(f"specdecode_speculation_enabled{{{MODEL}}}", "{{pod}} {{model_name}}"),
        )
        .height(8)
        .span(12),
        graph(
            "Speculative tokens: running k and the right-sized K",
            "k the engine runs with, and the K (1..k) with the highest expected speedup L(K) / (1 + K·c) from"
            " per-position acceptance, with the range of K not distinguishable from it (dashed). A range wholly"
            " below k means fewer speculative tokens would pay better; c's source is the 'source' label (unknown:"
            " drafts taken as free, so K never drops).",
            query(f"specdecode_num_speculative_tokens{{{MODEL}}}", "running k {{pod}} {{model_name}}"),
            query(
                f"specdecode_recommended_num_speculative_tokens{{{MODEL}}}",
                "recommended K {{pod}} {{model_name}} ({{source}})",
                "B",
            ),
            query(f"specdecode_recommended_num_speculative_tokens_low{{{MODEL}}}", "range low {{pod}}", "C"),
            query(f"specdecode_recommended_num_speculative_tokens_high{{{MODEL}}}", "range high {{pod}}", "D"),
        )
        .unit("short")
        .min(0)
        .decimals(0)
        .with_override(*dashed("^range.*"))
        .height(8)
        .span(12),
        graph(
            "Speedup per load band",
            "Speedup with speculation per band of batch sizes (the windows' mean running requests): TPOT off / on"
            " where the band holds windows of both states, with its 95 % interval (dashed); else the expected"
            " speedup from the band's acceptance ('prior' in the legend). Speculation usually pays at low load and"
            " stops paying above some batch size: that is where the proposed schedule cuts it"
            " (specdecode_proposed_schedule_cut; 'spec-sidecar report' shows the whole schedule and why).",
            query(f"specdecode_load_band_speedup{{{MODEL}}}", "batch {{band}} {{pod}} ({{source}})"),
            query(f"specdecode_load_band_speedup_low{{{MODEL}}}", "interval low {{band}} {{pod}}", "B"),
            query(f"specdecode_load_band_speedup_high{{{MODEL}}}", "interval high {{band}} {{pod}}", "C"),
        )
        .unit("x")
        .thresholds(thresholds((None, "red"), (1.0, "green")))
        .thresholds_style(dashed_threshold_lines())
        .with_override(*dashed("^interval.*"))
        .height(8)
        .span(24),
    ]


def _temperature() -> list[PanelBuilder]:
    return [
        bucket_heatmap(
            "Per-request acceptance, temperature $temperature_bucket",
            "How many tapped requests had each acceptance ratio (vLLM per-request metrics). One panel per"
            " temperature bucket: acceptance usually collapses as temperature rises.",
            query(
                f"sum by (le) (increase(specdecode_request_acceptance_ratio_bucket{{{MODEL},"
                ' temperature_bucket="$temperature_bucket"}[$__rate_interval]))',
                "{{le}}",
            ).format(PromQueryFormat.HEATMAP),
        )
        .repeat("temperature_bucket")
        .repeat_direction("h")
        .max_per_row(4)
        .height(8)
        .span(6),
        graph(
            "Acceptance P10 / P50 / P90 by temperature",
            "Quantiles of per-request acceptance over the sidecar's bucket window, and the token-weighted ratio"
            " (solid). The red line is the disable threshold.",
            query(f"specdecode_bucket_acceptance_quantile{{{TAP}}}", "{{temperature_bucket}} P{{quantile}} {{pod}}"),
            query(f"specdecode_bucket_acceptance_ratio{{{TAP}}}", "{{temperature_bucket}} ratio {{pod}}", "B"),
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.5, "transparent")))
        .thresholds_style(dashed_threshold_lines())
        .with_override(*dashed(r".* P0\.[19] .*"))
        .height(8)
        .span(12),
        graph(
            "Tapped requests by temperature and source",
            "Requests per second through the tap. source=chunk_estimate is an estimate from stream chunk sizes;"
            " per_request_metrics is exact.",
            query(
                "sum by (temperature_bucket, source) "
                f"(rate(specdecode_tapped_requests_total{{{TAP}}}[$__rate_interval]))",
                "{{temperature_bucket}} {{source}}",
            ),
            query(
                f"sum by (temperature_bucket) (rate(specdecode_request_draft_tokens_total{{{TAP}}}[$__rate_interval]))",
                "{{temperature_bucket}} draft tok/s",
                "B",
            ),
            query(
                "sum by (temperature_bucket) (rate(specdecode_request_accepted_tokens_total"
                f"{{{TAP}}}[$__rate_interval]))",
                "{{temperature_bucket}} accepted tok/s",
                "C",
            ),
        )
        .unit("reqps")
        .height(8)
        .span(12),
    ]


def _latency_quantiles(metric: str, name: str) -> PanelBuilder:
    return (
        graph(
            f"{name} P50 / P95 / P99",
            f"{name} quantiles over the sidecar's window (histogram_quantile of the engine's bucket increases).",
            query(
                f'specdecode_latency_seconds{{{MODEL}, metric="{metric}", quantile=~"0.5|0.95|0.99"}}',
                "P{{quantile}} {{pod}}",
            ),
        )
        .unit("s")
        .min(0)
        .height(8)
        .span(12)
    )


def _latency() -> list[PanelBuilder]:
    return [
        _latency_quantiles("ttft", "TTFT"),
        _latency_quantiles("tpot", "TPOT"),
        graph(
            "Tail spread P99/P50 vs baseline",
            "P99/P50 now (solid) against the same ratio without speculation (dashed: configured or learned). P50"
            " improving while P99 regresses is speculation's signature failure.",
            query(f'specdecode_latency_p99_p50_ratio{{{MODEL}, metric=~"ttft|tpot|e2e"}}', "{{metric}} now {{pod}}"),
            query(
                f'specdecode_latency_p99_p50_ratio_baseline{{{MODEL}, metric=~"ttft|tpot|e2e"}}',
                "{{metric}} baseline {{pod}}",
                "B",
            ),
        )
        .unit("x")
        .with_override(*dashed(".* baseline .*"))
        .height(8)
        .span(12),
        graph(
            "Latency divergence",
            "Current P99/P50 over the baseline's. Above the dashed 1.5 for 15 minutes (tpot, e2e) the"
            " SpecDecodeLatencyDivergence alert fires.",
            query(f"specdecode_latency_divergence{{{MODEL}}}", "{{metric}} {{pod}}"),
        )
        .unit("x")
        .thresholds(thresholds((None, "green"), (1.5, "red")))
        .thresholds_style(dashed_threshold_lines())
        .height(8)
        .span(12),
        graph(
            "P99 at the tap by temperature",
            "TTFT and TPOT P99 measured by the tap per temperature bucket (streaming requests).",
            query(
                "histogram_quantile(0.99, sum by (le, temperature_bucket) "
                f"(rate(specdecode_request_ttft_seconds_bucket{{{TAP}}}[$__rate_interval])))",
                "TTFT {{temperature_bucket}}",
            ),
            query(
                "histogram_quantile(0.99, sum by (le, temperature_bucket) "
                f"(rate(specdecode_request_tpot_seconds_bucket{{{TAP}}}[$__rate_interval])))",
                "TPOT {{temperature_bucket}}",
                "B",
            ),
        )
        .unit("s")
        .min(0)
        .height(8)
        .span(24),
    ]


def _load() -> list[PanelBuilder]:
    return [
        graph(
            "KV cache usage",
            "Engine KV-cache usage. Speculation holds extra KV for draft tokens; near 100% requests queue.",
            query(f"specdecode_kv_cache_usage_ratio{{{MODEL}}}", "{{pod}} {{model_name}}"),
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .height(8)
        .span(8),
        graph(
            "Throughput",
            "Generated tokens per second over the sidecar's window.",
            query(f"specdecode_generation_tokens_per_second{{{MODEL}}}", "{{pod}} {{model_name}}"),
        )
        .unit("short")
        .min(0)
        .height(8)
        .span(8),
        graph(
            "Evidence: draft tokens in the window",
            "Draft tokens behind the acceptance ratio. Below the dashed --min-draft-tokens (200 by default) the"
            " sidecar does not judge.",
            query(f"specdecode_window_draft_tokens{{{MODEL}}}", "{{pod}} {{model_name}}"),
        )
        .unit("short")
        .min(0)
        .thresholds(thresholds((None, "orange"), (200, "transparent")))
        .thresholds_style(dashed_threshold_lines())
        .height(8)
        .span(8),
    ]


def _health() -> list[PanelBuilder]:
    return [
        states(
            "Sidecar and engine up",
            "sidecar: Prometheus can scrape the sidecar (it also carries the pod's OpenAI traffic). engine: the"
            " sidecar can scrape vLLM in its pod. leader: this sidecar holds the Lease and may act.",
            on_off(),
            query(f'up{{job="spec-sidecar", {POD}}}', "sidecar {{pod}}"),
            query(f"specdecode_target_up{{{POD}}}", "engine {{pod}}", "B"),
            query(f"specdecode_leader{{{POD}}}", "leader {{pod}}", "C"),
        )
        .height(8)
        .span(12),
        states(
            "Decision state",
            "The state of each sidecar's decision (only the leader's acts).",
            [],
            query(f"max by (pod, state) (specdecode_decision_state{{{POD}}}) == 1", "{{pod}} {{state}}"),
        )
        .height(8)
        .span(12),
        graph(
            "Engine scrapes",
            "Scrapes of vLLM's /metrics per second by result, and how long the last one took.",
            query(f"sum by (result) (rate(specdecode_scrapes_total{{{POD}}}[$__rate_interval]))", "{{result}}"),
            query(f"max(specdecode_scrape_duration_seconds{{{POD}}})", "duration (s)", "B"),
        )
        .unit("short")
        .height(8)
        .span(6),
        graph(
            "Decisions",
            "Decisions by outcome and reason (the status page says the same in sentences).",
            query(
                f"sum by (decision, reason) (increase(specdecode_decisions_total{{{POD}}}[$__rate_interval]))",
                "{{decision}} {{reason}}",
            ),
        )
        .unit("short")
        .height(8)
        .span(6),
        graph(
            "Toggles and actuator errors",
            "Speculation turned off/on (by the sidecar or a person), and failed writes to Kubernetes by reason.",
            query(
                f"sum by (action, mode) (increase(specdecode_toggles_total{{{POD}}}[$__rate_interval]))",
                "toggle {{action}} {{mode}}",
            ),
            query(
                f"sum by (reason) (increase(specdecode_actuator_errors_total{{{POD}}}[$__rate_interval]))",
                "error {{reason}}",
                "B",
            ),
        )
        .unit("short")
        .height(8)
        .span(6),
        graph(
            "Tap errors",
            "Requests the tap could not relay whole, per second by reason. upstream_*: vLLM failed requests"
            " in flight (SpecSidecarTapUpstreamFailing); the others: clients refused or cut off by the tap's own"
            " settings (SpecSidecarTapRefusing). docs/runbook.md says what each means.",
            query(f"sum by (reason) (rate(specdecode_tap_errors_total{{{POD}}}[$__rate_interval]))", "{{reason}}"),
        )
        .unit("reqps")
        .height(8)
        .span(6),
    ]


__all__ = ["DATASOURCE", "UID", "build"]
