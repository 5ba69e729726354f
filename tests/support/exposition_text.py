"""vLLM V1 /metrics text written from counter values, and the Stats the pure core computes from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser
from sidecar.core.snapshot import Snapshot, build_snapshot
from sidecar.core.stats import AnalysisConfig, ModelStats, Stats, compute_stats
from sidecar.core.verdict import Thresholds

WANTED = wanted_sample_names()


PARSER = SampleParser(WANTED, openmetrics_aliases(WANTED))


CONFIG = AnalysisConfig(Thresholds(min_draft_tokens=100), draft_cost_ratio=0.1)


SPEC = "vllm:spec_decode_num_"


@dataclass
class Engine:
    """The spec-decode counters of one vLLM V1 engine (one data-parallel rank) at one scrape."""

    drafts: float
    draft_tokens: float
    accepted: float
    per_position: Sequence[float]
    created: float = 1_700_000_000.0
    model: str = "tiny"
    engine: str = "0"
    ttft: Sequence[tuple[str, float]] = field(default_factory=list)


def v1_text(*engines: Engine) -> str:
    lines = ["# TYPE vllm:num_requests_running gauge"]
    for e in engines:
        labels = f'engine="{e.engine}",model_name="{e.model}"'
        lines.append(f"vllm:num_requests_running{{{labels}}} 1.0")
        for name, value in (("drafts", e.drafts), ("draft_tokens", e.draft_tokens), ("accepted_tokens", e.accepted)):
            lines.append(f"{SPEC}{name}_total{{{labels}}} {value}")
            lines.append(f"{SPEC}{name}_created{{{labels}}} {e.created}")
        for position, value in enumerate(e.per_position):
            lines.append(f'{SPEC}accepted_tokens_per_pos_total{{{labels},position="{position}"}} {value}')
            lines.append(f'{SPEC}accepted_tokens_per_pos_created{{{labels},position="{position}"}} {e.created}')
        for le, count in e.ttft:
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {count}')
    return "\n".join(lines) + "\n"


def snapshot(text: str, at: float) -> Snapshot:
    parsed = PARSER.parse(text)
    assert parsed.bad_lines == 0, parsed.bad_examples
    return build_snapshot(parsed.samples, at)


def stats_of(*texts: str, config: AnalysisConfig = CONFIG) -> Stats:
    return compute_stats([snapshot(t, 100.0 + 10 * i) for i, t in enumerate(texts)], config)


def only_model(stats: Stats) -> ModelStats:
    (model,) = stats.models
    return model
