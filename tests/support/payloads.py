"""Build vLLM V1 /metrics text with chosen counter values, in the layout a real vLLM 0.32 writes.

For tests that need exact control of the numbers; tests that need realism use the captured fixtures in
tests/fixtures/vllm/ instead.
"""

from __future__ import annotations

from collections.abc import Sequence

SPEC = "vllm:spec_decode_num_"


def vllm_payload(  # noqa: PLR0917 - keyword use only in practice; each knob is one engine series
    model: str = "tiny",
    drafts: float | None = None,
    draft_tokens: float | None = None,
    accepted: float | None = None,
    per_position: Sequence[float] = (),
    engine: str = "0",
    created: float = 1_700_000_000.0,
    ttft_buckets: Sequence[tuple[str, float]] = (),
    ttft_sum: float = 0.0,
) -> str:
    labels = f'engine="{engine}",model_name="{model}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} 0.0",
    ]
    if draft_tokens is not None:
        for name, value in (("drafts", drafts), ("draft_tokens", draft_tokens), ("accepted_tokens", accepted)):
            if value is None:
                continue
            lines += [
                f"# TYPE {SPEC}{name} counter",
                f"{SPEC}{name}_total{{{labels}}} {value}",
                f"{SPEC}{name}_created{{{labels}}} {created}",
            ]
        lines.append(f"# TYPE {SPEC}accepted_tokens_per_pos counter")
        for position, value in enumerate(per_position):
            lines.append(f'{SPEC}accepted_tokens_per_pos_total{{{labels},position="{position}"}} {value}')
    if ttft_buckets:
        lines.append("# TYPE vllm:time_to_first_token_seconds histogram")
        for le, count in ttft_buckets:
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {count}')
        lines.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {ttft_buckets[-1][1]}")
        lines.append(f"vllm:time_to_first_token_seconds_sum{{{labels}}} {ttft_sum}")
    return "\n".join(lines) + "\n"
