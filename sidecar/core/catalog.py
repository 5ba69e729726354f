"""Every engine metric the sidecar reads, in one table.

Each engine dialect maps its own family names onto the roles the rest of the core uses. Detection is by
presence: the first dialect whose marker families appear in a scrape wins. Facts behind the names are in
docs/engines.md (#vllm-spec-decode-counters-v1-engine, #latency-and-load-metrics, #other-engines).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    DRAFTS = "drafts"
    DRAFT_TOKENS = "draft_tokens"
    ACCEPTED_TOKENS = "accepted_tokens"
    ACCEPTED_PER_POS = "accepted_per_pos"
    GENERATION_TOKENS = "generation_tokens"
    # Gauges an engine reports already averaged (SGLang, V0): used when counters are missing.
    ACCEPT_RATE_GAUGE = "accept_rate_gauge"
    ACCEPT_LENGTH_GAUGE = "accept_length_gauge"
    KV_CACHE_USAGE = "kv_cache_usage"
    REQUESTS_RUNNING = "requests_running"
    REQUESTS_WAITING = "requests_waiting"


LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True)
class Dialect:
    engine: str
    model_label: str
    counters: dict[Role, str]
    gauges: dict[Role, tuple[str, ...]]
    histograms: dict[str, tuple[str, ...]]
    # Sample names whose presence identifies the dialect, even with speculation off.
    markers: tuple[str, ...]
    # Per-position counters carry this label.
    position_label: str = "position"
    # V0 counted accepted tokens past a rejection: its ratio is not comparable with V1's.
    comparable: bool = True


VLLM_V1 = Dialect(
    engine="vllm",
    model_label="model_name",
    counters={
        Role.DRAFTS: "vllm:spec_decode_num_drafts",
        Role.DRAFT_TOKENS: "vllm:spec_decode_num_draft_tokens",
        Role.ACCEPTED_TOKENS: "vllm:spec_decode_num_accepted_tokens",
        Role.ACCEPTED_PER_POS: "vllm:spec_decode_num_accepted_tokens_per_pos",
        Role.GENERATION_TOKENS: "vllm:generation_tokens",
    },
    gauges={
        # kv_cache_usage_perc is 0.12+; gpu_cache_usage_perc before (a 0-1 ratio despite the name).
        Role.KV_CACHE_USAGE: ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        Role.REQUESTS_RUNNING: ("vllm:num_requests_running",),
        Role.REQUESTS_WAITING: ("vllm:num_requests_waiting",),
    },
    histograms={
        "ttft": ("vllm:time_to_first_token_seconds",),
        "tpot": ("vllm:request_time_per_output_token_seconds",),
        # inter_token_latency is 0.11+; before it the same histogram was time_per_output_token.
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e": ("vllm:e2e_request_latency_seconds",),
    },
    markers=(
        "vllm:num_requests_running",
        "vllm:generation_tokens_total",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:spec_decode_num_draft_tokens_total",
    ),
)

VLLM_V0 = Dialect(
    engine="vllm-v0",
    model_label="model_name",
    counters={
        Role.DRAFT_TOKENS: "vllm:spec_decode_num_draft_tokens",
        Role.ACCEPTED_TOKENS: "vllm:spec_decode_num_accepted_tokens",
        Role.GENERATION_TOKENS: "vllm:generation_tokens",
    },
    gauges={
        Role.ACCEPT_RATE_GAUGE: ("vllm:spec_decode_draft_acceptance_rate",),
        Role.KV_CACHE_USAGE: ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
        Role.REQUESTS_RUNNING: ("vllm:num_requests_running",),
        Role.REQUESTS_WAITING: ("vllm:num_requests_waiting",),
    },
    histograms=VLLM_V1.histograms,
    markers=("vllm:spec_decode_draft_acceptance_rate", "vllm:spec_decode_efficiency"),
    comparable=False,
)

SGLANG = Dialect(
    engine="sglang",
    model_label="model_name",
    counters={Role.GENERATION_TOKENS: "sglang:generation_tokens"},
    gauges={
        Role.ACCEPT_RATE_GAUGE: ("sglang:spec_accept_rate",),
        Role.ACCEPT_LENGTH_GAUGE: ("sglang:spec_accept_length",),
        Role.KV_CACHE_USAGE: ("sglang:token_usage",),
        Role.REQUESTS_RUNNING: ("sglang:num_running_reqs",),
        Role.REQUESTS_WAITING: ("sglang:num_queue_reqs",),
    },
    histograms={
        "ttft": ("sglang:time_to_first_token_seconds",),
        "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        "e2e": ("sglang:e2e_request_latency_seconds",),
    },
    markers=("sglang:spec_accept_rate", "sglang:num_running_reqs", "sglang:generation_tokens_total"),
)

LLAMACPP = Dialect(
    engine="llamacpp",
    model_label="model_name",
    counters={
        Role.DRAFTS: "llamacpp:spec_decode_num_drafts",
        Role.DRAFT_TOKENS: "llamacpp:spec_decode_num_draft_tokens",
        Role.ACCEPTED_TOKENS: "llamacpp:spec_decode_num_accepted_tokens",
        Role.ACCEPTED_PER_POS: "llamacpp:spec_decode_num_accepted_tokens_per_pos",
    },
    gauges={},
    histograms={},
    markers=("llamacpp:spec_decode_num_draft_tokens_total",),
)

TRTLLM = Dialect(
    engine="trtllm",
    model_label="model_name",
    counters={
        Role.DRAFT_TOKENS: "trtllm_spec_decode_num_draft_tokens",
        Role.ACCEPTED_TOKENS: "trtllm_spec_decode_num_accepted_tokens",
    },
    gauges={Role.ACCEPT_LENGTH_GAUGE: ("trtllm_spec_decode_acceptance_length",)},
    histograms={},
    markers=("trtllm_spec_decode_num_draft_tokens_total",),
)

# Order matters: V0 is told apart from V1 by its gauge, so it is tried first.
DIALECTS: tuple[Dialect, ...] = (VLLM_V0, VLLM_V1, SGLANG, LLAMACPP, TRTLLM)

COUNTER_SUFFIXES = ("_total", "_created")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def counter_samples(family: str) -> tuple[str, ...]:
    return tuple(family + s for s in COUNTER_SUFFIXES)


def histogram_samples(family: str) -> tuple[str, ...]:
    return tuple(family + s for s in HISTOGRAM_SUFFIXES)


def wanted_sample_names(dialects: tuple[Dialect, ...] = DIALECTS) -> frozenset[str]:
    """Every sample name any dialect reads; the parser keeps these and skips everything else."""
    names: set[str] = set()
    for d in dialects:
        for family in d.counters.values():
            names.update(counter_samples(family))
        for gauge_names in d.gauges.values():
            names.update(gauge_names)
        for hist_names in d.histograms.values():
            for family in hist_names:
                names.update(histogram_samples(family))
        for marker in d.markers:
            names.add(marker)
    return frozenset(names)


def openmetrics_aliases(names: frozenset[str]) -> dict[str, str]:
    """``vllm_x`` for ``vllm:x``: how sample names come out under an OpenMetrics Accept header."""
    return {n.replace(":", "_"): n for n in names if ":" in n}
