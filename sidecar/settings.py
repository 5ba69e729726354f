"""Every knob of the sidecar, in documented sections; one field per CLI flag and environment variable.

A field ``scrape_interval`` is the flag ``--scrape-interval`` and the environment variable
``SPEC_SIDECAR_SCRAPE_INTERVAL``; a flag beats the environment, which beats the default. Each section is a class
of its own (its docstring says what it is for) and :class:`Settings` is all of them: ``spec-sidecar run`` takes
every section, ``status``/``enable``/``disable`` take :class:`TargetSettings` alone. The CLI builds its flags from
these fields (``--help`` groups them by section) and docs/configuration.md is generated from them, so the three
never drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.core.cost_prior import UNKNOWN as UNKNOWN_COST
from sidecar.core.cost_prior import DraftCost, settings_from_json
from sidecar.core.forward_paths import parse_forward_paths
from sidecar.core.specargs import DEFAULT_SECRET_FLAGS
from sidecar.core.stats import AnalysisConfig
from sidecar.core.temperature import parse_edges
from sidecar.core.verdict import Thresholds

LATENCY_KEYS = ("ttft", "tpot", "itl", "e2e")
ENV_PREFIX = "SPEC_SIDECAR_"


class _Section(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)


class ListenSettings(_Section):
    """Where things are: the engine beside us, the sidecar's listeners, and its log."""

    vllm_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the engine beside us; /metrics is scraped and /v1/* is forwarded there.",
    )
    listen: str = Field(
        "0.0.0.0:8081",
        description=(
            "HOST:PORT of the tap (the OpenAI API, forwarded to vLLM), and of the sidecar's own routes (/metrics, "
            "/healthz, /readyz, /status, /api/*) unless --metrics-listen gives them a port of their own."
        ),
    )
    metrics_listen: str | None = Field(
        None,
        description=(
            "HOST:PORT for the sidecar's own routes (/metrics, /healthz, /readyz, /status, /api/*), apart from the "
            "tap: then --listen serves the tap only, and a NetworkPolicy can let API clients reach one port and "
            "Prometheus the other (the Helm chart does). Unset: one listener for both."
        ),
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @field_validator("vllm_url")
    @classmethod
    def _check_vllm_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Without a scheme, httpx fails every scrape and the sidecar would only log warnings forever. An empty
        # --prometheus-url (a chart value left blank) means no fleet mode, as before.
        if value or info.field_name == "vllm_url":
            check_url(value or "")
        return value

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            host_port(value)
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _apart_from_the_tap(cls, value: str | None, info: ValidationInfo) -> str | None:
        listen = info.data.get("listen")
        if value is not None and listen is not None and host_port(value)[1] == host_port(listen)[1]:
            raise ValueError("the metrics listener needs a port of its own, not the tap's (--listen)")
        return value


class ScrapeSettings(_Section):
    """Scraping the engine's /metrics: how often, and the bounds that keep a hostile scrape cheap."""

    scrape_interval: float = Field(5.0, gt=0, description="Seconds between scrapes of the engine's /metrics.")
    scrape_timeout: float = Field(
        3.0,
        gt=0,
        description=(
            "Seconds a whole scrape may take (connect, headers and the last byte of the body) before it counts "
            "as failed (timeout); an engine trickling its body cannot hold a scrape open longer."
        ),
    )
    scrape_max_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest /metrics body accepted, in bytes; a larger one is dropped and counted as too_large.",
    )
    scrape_max_series: int = Field(
        25_000,
        gt=0,
        description=(
            "Samples of the families the sidecar reads kept per scrape (a histogram bucket is one). A scrape with "
            "more is dropped whole (too_many_series; its samples counted in specdecode_dropped_total): part of "
            "a scrape would sum some engines and not others. One vLLM engine writes about 120."
        ),
    )
    scrape_max_label_bytes: int = Field(
        1024,
        gt=0,
        description=(
            "Longest label text of one sample line (between the braces), in characters; a longer line is dropped "
            "and counted. vLLM's are under 100 plus the model name."
        ),
    )
    max_models: int = Field(
        64,
        gt=0,
        description=("Model names tracked per scrape (the first ones by name); the others are dropped and counted."),
    )
    trend_max_points: int = Field(
        20_000,
        gt=0,
        description=(
            "Points (one per model per scrape) kept for the last hour's acceptance chart on /status; the "
            "oldest beyond it are dropped and counted."
        ),
    )
    scrape_parse_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "Seconds the parse worker (a child process) may take to turn one scrape's body into the window's "
            "numbers; past it the worker is restarted, the scrape counts as parse_failed and the window starts "
            "again. The default bounds' worst scrape takes about a second."
        ),
    )
    stale_after: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds after the last good scrape from which its window is stale: target_up is 0 and the derived "
            "gauges are no longer exported. Default: 2 x --scrape-interval + --scrape-timeout."
        ),
    )

    def stale_seconds(self) -> float:
        """--stale-after, or two missed scrapes and the longest a third may take."""
        return self.stale_after if self.stale_after is not None else 2 * self.scrape_interval + self.scrape_timeout


class AnalysisSettings(_Section):
    """The numbers: the window, the verdict's thresholds, the cost model, latency baselines and the SLO."""

    window: float = Field(
        60.0,
        gt=0,
        description="Seconds of history each decision looks at: counters and buckets are increases over it.",
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="Acceptance ratio below which speculation is net-negative (verdict disable)."
    )
    keep_threshold: float = Field(
        0.65, ge=0, le=1, description="Acceptance ratio from which speculation is a likely win (verdict keep)."
    )
    min_draft_tokens: int = Field(
        200,
        ge=0,
        description="Draft tokens a window must carry before any verdict; fewer is no-data, never a decision.",
    )
    draft_cost_ratio: float | None = Field(
        None,
        ge=0,
        description=(
            "c = draft cost / target cost per step, for break-even L = 1 + k*c and expected speedup "
            "(~0 for ngram/suffix, small for EAGLE/MTP, ~draft/target size for a draft model). Unset: assumed "
            "from --speculative-config (or the target's args), and shown as assumed."
        ),
    )
    speculative_config: str | None = Field(
        None,
        description=(
            'The engine\'s --speculative-config JSON, e.g. \'{"method":"ngram","num_speculative_tokens":3}\', '
            "to assume the draft cost from when --draft-cost-ratio is not set; read from the target's args when "
            "acting on one. A draft model's cost is its size over the target's, when both config.json are readable."
        ),
    )
    target_model: str | None = Field(
        None,
        description=(
            "The target model's folder (the engine's --model), to read its config.json for a draft model's "
            "assumed cost; read from the target's args when acting on one."
        ),
    )
    baseline_p99_p50: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Known P99/P50 ratios without speculation, e.g. 'ttft=2.5,tpot=1.4'. Metrics not given are learned "
            "from windows observed with speculation off."
        ),
    )
    slo: Literal["ttft", "tpot", "e2e"] | None = Field(
        None,
        description=(
            "Which latency your SLO is on. Speculation helps TPOT and can hurt TTFT and the tail; the advice in "
            "report and /status weighs the divergence of this metric."
        ),
    )

    @field_validator("baseline_p99_p50", mode="before")
    @classmethod
    def _parse_baseline(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in value.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key.strip() not in LATENCY_KEYS:
                raise ValueError(f"expected metric=ratio with metric in {LATENCY_KEYS}, got {item!r}")
            pairs[key.strip()] = float(raw)
        return pairs

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        if self.threshold > self.keep_threshold:
            raise ValueError(
                f"--threshold ({self.threshold:g}) is above --keep-threshold ({self.keep_threshold:g}); "
                "set --threshold at or below --keep-threshold (acceptance between them is borderline)"
            )
        return self

    @field_validator("speculative_config")
    @classmethod
    def _check_speculative_config(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                settings_from_json(value)
            except ValueError as exc:
                raise ValueError(
                    f"--speculative-config must be the engine's JSON object, e.g. "
                    f'\'{{"method":"ngram","num_speculative_tokens":3}}\' ({exc})'
                ) from None
        return value

    def analysis_config(self, draft_cost_prior: DraftCost = UNKNOWN_COST) -> AnalysisConfig:
        """The analysis settings; ``draft_cost_prior`` is the c assumed when --draft-cost-ratio is not set."""
        return AnalysisConfig(
            Thresholds(self.threshold, self.keep_threshold, float(self.min_draft_tokens)),
            self.draft_cost_ratio,
            draft_cost_prior,
        )


class DecisionSettings(_Section):
    """The decision rule: when a run of low windows turns speculation off, and what may turn it back on."""

    trip_windows: int = Field(
        3, ge=1, description="Consecutive low windows (each with enough draft tokens) before turning speculation off."
    )
    cooldown: float = Field(
        600.0, ge=0, description="Seconds after any toggle during which no other automatic toggle happens."
    )
    dry_run: bool = Field(False, description="Decide and report everything, write nothing.")
    evidence_z: float = Field(
        2.0,
        ge=0,
        description=(
            "A window fails only when its ratio is below the threshold by more than this many standard errors; "
            "the error is the larger of the window's own (from its counters) and the spread between recent "
            "windows, so bursty all-or-nothing traffic cannot trip the rule. 0 compares bare ratios."
        ),
    )
    warmup_windows: int = Field(
        15,
        ge=0,
        description=(
            "Windows after a start during which no window can fail, while the spread between windows is "
            "learned; after it, a spread kept from fewer windows gives way to the spread of all windows so far. "
            "Without it, 32 % of fresh starts on all-or-nothing (mixed-temperature) traffic at acceptance 0.55 "
            "toggled falsely in simulation; with 15, none did. It costs 15 windows after each start without a "
            "disable (the cooldown already covers the sidecar's own toggles). 0 acts from the first windows: "
            "for demos and tests with short windows (docs/policy.md)."
        ),
    )
    hysteresis: float = Field(
        0.05, ge=0, le=1, description="A trial keeps speculation on only at acceptance >= threshold + this."
    )
    breakeven_rule: bool = Field(
        False,
        description=(
            "Also count a window as failing when L < 1 + k*c (c: --draft-cost-ratio, or assumed from the "
            "speculative config)."
        ),
    )
    measured_breakeven: bool = Field(
        True,
        description=(
            "Judge acceptance against the break-even measured from this deployment's TPOT with speculation on and "
            "off at matched load, once established (5 windows of each, interval <= 0.1 wide); --threshold until "
            "then. --no-measured-breakeven keeps --threshold always (docs/policy.md)."
        ),
    )
    divergence_factor: float | None = Field(
        None,
        gt=1,
        description="Also count a window as failing when TPOT or e2e P99/P50 exceeds this factor times the baseline.",
    )
    flap_budget: int = Field(
        4, ge=1, description="Automatic toggles allowed per --flap-period; one more latches and waits for a human."
    )
    flap_period: float = Field(6 * 3600.0, gt=0, description="Seconds over which --flap-budget counts toggles.")
    manual_grace: float = Field(
        3600.0, ge=0, description="Seconds a manual enable is left alone before the policy may act again."
    )
    trial_after: float | None = Field(
        None,
        gt=0,
        description=(
            "Timed trial: seconds after an automatic disable to re-enable and re-measure (backs off x2 after each "
            "failed trial, stops after --trial-max-tries). Off when unset."
        ),
    )
    trial_max_tries: int = Field(3, ge=1, description="Failed trials in a row before trials stop.")
    rollout_timeout: float = Field(
        1800.0,
        ge=0,
        description=(
            "Seconds the pods of a config the sidecar (or a human with enable/disable) wrote may take to become "
            "ready; past it the previous config is put back byte for byte, a Warning Event is raised and the "
            "sidecar latches until a human clears spec-sidecar.io/latched. Keep it above the engine's start-up "
            "time (the chart's progressDeadlineSeconds, 1800, by default). 0 never reverts."
        ),
    )
    reduce_k: bool = Field(
        False,
        description=(
            "Before turning speculation off, lower num_speculative_tokens in the speculative config when the first "
            "draft positions still pay on their own (their acceptance clears the threshold + --hysteresis and the "
            "expected speedup at that K is above 1.05 at the low end of its interval). Same guards, record, Event, "
            "cooldown and flap budget as a disable, once per record; 'enable' restores the original K byte for "
            "byte (docs/policy.md)."
        ),
    )
    schedule_k: bool = Field(
        False,
        description=(
            "When the engine's own latency shows speculation paying at low load and hurting at high load (TPOT "
            "with speculation on and off per load band, each with 95 % confidence), write "
            "num_speculative_tokens_per_batch_size into the speculative config: K up to the last batch size where "
            "it pays, 0 above. Before a disable or reduce-k, and also while the windows pass. Same guards, record, "
            "Event, cooldown, flap budget and rollout watch as a disable, once per record; refused with data "
            "parallelism and on vLLM before 0.32; 'enable' takes it out byte for byte (docs/policy.md)."
        ),
    )


class TargetSettings(_Section):
    """The target the sidecar (and status, enable, disable) acts on: a Deployment or a local manifest."""

    deployment: str | None = Field(None, description="Kubernetes Deployment to act on (with --namespace).")
    namespace: str | None = Field(None, description="Namespace of --deployment; defaults to the pod's own.")
    container: str = Field("vllm", description="Name of the vLLM container inside --deployment.")
    deployment_file: str | None = Field(
        None, description="A local YAML manifest to act on instead of a cluster (same contract)."
    )
    secret_flags: str = Field(
        ",".join(DEFAULT_SECRET_FLAGS),
        description=(
            "Comma-separated engine flags whose values are credentials: never written to the removal record, "
            "Events or logs (restore takes them from the live args). Replaces the default list."
        ),
    )
    kubeconfig: str | None = Field(
        None,
        description=(
            "Kubeconfig file for --deployment. Unset: in-cluster credentials in a pod, else $KUBECONFIG, else "
            "~/.kube/config."
        ),
    )
    kube_host: str | None = Field(
        None,
        description=(
            "API server URL to use instead of a kubeconfig, without credentials (e.g. kubectl proxy's "
            "http://127.0.0.1:8001)."
        ),
    )

    @field_validator("secret_flags")
    @classmethod
    def _check_secret_flags(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if any(not n.startswith("-") for n in names):
            raise ValueError(f"expected flag names such as --api-key, got {value!r}")
        return value

    def secret_flag_list(self) -> tuple[str, ...]:
        return secret_flags_of(self.secret_flags)


class FleetSettings(_Section):
    """Fleet mode: decide on the whole Deployment's numbers, read from Prometheus."""

    prometheus_url: str | None = Field(
        None, description="Prometheus to read fleet-wide rates from; the leader then judges all replicas as one."
    )
    prometheus_selector: str | None = Field(
        None,
        description=(
            "PromQL label matchers (no braces) picking the Deployment's pods in --prometheus-url; default "
            'namespace="NS",pod=~"DEPLOYMENT-[a-z0-9]+-[a-z0-9]+" from --namespace and --deployment.'
        ),
    )

    @field_validator("prometheus_selector")
    @classmethod
    def _fleet_needs_pods(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Without a selector or a Deployment to build one from, fleet mode would sum every engine in Prometheus.
        if info.data.get("prometheus_url") and not (value or "").strip() and not info.data.get("deployment"):
            raise ValueError("fleet mode (--prometheus-url) needs --prometheus-selector or --deployment")
        return value

    @field_validator("prometheus_url")
    @classmethod
    def _check_prometheus_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Without a scheme, httpx fails every scrape and the sidecar would only log warnings forever. An empty
        # --prometheus-url (a chart value left blank) means no fleet mode, as before.
        if value or info.field_name == "vllm_url":
            check_url(value or "")
        return value


class TapSettings(_Section):
    """The tap: the OpenAI API pass-through, its client timeouts and its temperature buckets."""

    temperature_buckets: str = Field(
        "0.3,0.7,1.0",
        description=(
            "Edges that cut positive temperatures into buckets: '0.3,0.7,1.0' gives (0,0.3), [0.3,0.7), [0.7,1) and "
            "[1,+Inf). Temperature 0 is always its own bucket '0'; requests that omit it count as 'default'."
        ),
    )
    tap_max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest request body the tap accepts; larger ones get a 413."
    )
    tap_upstream_idle: float = Field(
        4.0,
        gt=0,
        description=(
            "Seconds a kept-alive connection to vLLM may stay idle and still be reused. Keep it under vLLM's own "
            "idle limit (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default), so the tap rarely sends on a connection "
            "vLLM is closing; raise both together to keep connections warm across quiet spells."
        ),
    )
    tap_ask_for_usage: bool = Field(
        True,
        description=(
            "Ask vLLM for the final usage chunk of streams whose client did not (it carries per-request "
            "acceptance), and strip it again so the client gets the bytes it asked for."
        ),
    )
    tap_estimate_from_chunks: bool = Field(
        False,
        description=(
            "Without per-request metrics (older vLLM, flag off), estimate acceptance from stream chunk sizes; "
            "exported with source=chunk_estimate."
        ),
    )
    tap_forward_paths: str = Field(
        "openai",
        description=(
            "Paths the tap forwards to vLLM, comma-separated: 'openai' (the inference APIs, tokenize, health and "
            "version probes; docs/tap.md lists them), /exact/paths, /prefixes/* and '*' for every path. Others get "
            "a 403 naming this setting: vLLM's admin routes (/scale_elastic_ep, /v1/load_lora_adapter, "
            "/start_profile, /sleep, /reset_prefix_cache, ...) stay out of reach unless listed here."
        ),
    )
    client_header_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "Seconds a client has to send a request's whole head, from its first byte (or from connecting); "
            "slower clients get a 408 and the connection is closed."
        ),
    )
    client_body_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "Longest silence, in seconds, while a client sends a request body; after it the connection is closed. "
            "Waiting for the response is not silence: streams may run for minutes."
        ),
    )
    keepalive_timeout: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds an idle kept-alive client connection stays open between requests (vLLM's own "
            "VLLM_HTTP_TIMEOUT_KEEP_ALIVE is 5 s, so clients see the same through the tap)."
        ),
    )
    bucket_window: float = Field(
        300.0, gt=0, description="Seconds of requests behind the per-temperature-bucket gauges (P10/P50/P90)."
    )

    @field_validator("temperature_buckets")
    @classmethod
    def _check_buckets(cls, value: str) -> str:
        parse_edges(value)
        return value

    @field_validator("tap_forward_paths")
    @classmethod
    def _check_forward_paths(cls, value: str) -> str:
        parse_forward_paths(value)
        return value


# In the order of the flags and of docs/configuration.md.
SECTIONS: tuple[type[_Section], ...] = (
    ListenSettings,
    ScrapeSettings,
    AnalysisSettings,
    DecisionSettings,
    TargetSettings,
    FleetSettings,
    TapSettings,
)


# Bases in reverse: pydantic puts the fields of the last base first, so the fields keep the order of SECTIONS.
class Settings(
    TapSettings, FleetSettings, TargetSettings, DecisionSettings, AnalysisSettings, ScrapeSettings, ListenSettings
):
    """Every setting of ``spec-sidecar run``: all the sections."""


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected a URL such as http://127.0.0.1:8000 (with http:// or https://), got {url!r}")


def secret_flags_of(value: str | None) -> tuple[str, ...]:
    """``--secret-flags`` text → flag names (None: the defaults)."""
    if value is None:
        return DEFAULT_SECRET_FLAGS
    return tuple(n.strip() for n in value.split(",") if n.strip())


def host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
