"""Which request paths the tap forwards to vLLM (the setting ``tap_forward_paths``).

vLLM's server carries more than the inference API: depending on its flags and environment it also answers
``/scale_elastic_ep`` (registered whenever the model generates), ``/v1/load_lora_adapter``, ``/start_profile``,
and with ``VLLM_SERVER_DEV_MODE`` ``/reset_prefix_cache``, ``/sleep``, ``/wake_up``, ``/collective_rpc`` and the
RL weight-update routes. A client allowed to reach the tap should reach the API, not those. The setting is a
comma-separated list of:

- ``openai``: the group below, the default;
- ``/exact/path``;
- ``/prefix/*``: every path under ``/prefix/`` (a ``.`` or ``..`` segment never matches a prefix);
- ``*``: every path (the tap forwards everything, as before this setting existed).

``openai`` is what vLLM 0.32's server offers to API clients (read off ``vllm/entrypoints``): the OpenAI API
(completions, chat, responses, models, embeddings, audio), the other client-facing inference APIs vLLM speaks
(Anthropic messages, Cohere chat, SageMaker invocations, scoring, rerank, pooling, classify), tokenize and
detokenize, and the probes clients and load balancers poll (health, ping, version, load). Left out: anything
that changes or inspects the server (LoRA loading, profiling, elastic EP, sleep, cache resets, RPC, RL weight
updates, pause/resume, fault tolerance, server info, tokenizer info, KV event sources), the disaggregated-serving
internals (render, derender, token-in-token-out generate), vLLM's own /metrics and its API docs.

The hot path pays one set lookup (``path in exact``); prefixes are tried only for paths not in the set.
"""

from __future__ import annotations

from dataclasses import dataclass

OPENAI = "openai"
EVERYTHING = "*"

OPENAI_PATHS: tuple[str, ...] = (
    # OpenAI API
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/chat/completions/batch",
    "/v1/responses",
    "/v1/responses/*",  # GET /v1/responses/{id}, POST /v1/responses/{id}/cancel
    "/v1/models",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/realtime",  # a WebSocket: the tap closes it (1003) rather than forward it
    # other inference APIs vLLM serves to clients
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/cohere/v2/chat",
    "/invocations",
    "/v1/score",
    "/score",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v2/embed",
    "/pooling",
    "/classify",
    "/generative_scoring",
    "/v1/systemone",
    "/tokenize",
    "/detokenize",
    # what clients and load balancers poll
    "/health",
    "/ping",
    "/version",
    "/load",
)


@dataclass(frozen=True)
class ForwardPaths:
    exact: frozenset[str]
    prefixes: tuple[str, ...] = ()  # each ends with "/"
    everything: bool = False

    def allows(self, path: str) -> bool:
        return self.everything or path in self.exact or self.allows_by_prefix(path)

    def allows_by_prefix(self, path: str) -> bool:
        """The slow half of ``allows``, for paths not in ``exact``."""
        if self.everything:
            return True
        if not any(path.startswith(prefix) for prefix in self.prefixes):
            return False
        # "/v1/responses/../../sleep" starts with an allowed prefix; whether the upstream would resolve the dots
        # is its business, so such a path is never allowed by a prefix.
        return not any(segment in (".", "..") for segment in path.split("/"))


def parse_forward_paths(text: str) -> ForwardPaths:
    """Parse the setting; raises ValueError on an item that is neither a group, ``*`` nor a path."""
    exact: set[str] = set()
    prefixes: list[str] = []
    everything = False
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in _expand(items):
        if item == EVERYTHING:
            everything = True
        elif not item.startswith("/"):
            raise ValueError(f"tap path {item!r}: expected {OPENAI!r}, {EVERYTHING!r}, /a/path or /a/prefix/*")
        elif item.endswith("/*"):
            prefixes.append(item[:-1])
        elif "*" in item:
            raise ValueError(f"tap path {item!r}: '*' may only end a prefix, as in /v1/responses/*")
        else:
            exact.add(item)
    return ForwardPaths(frozenset(exact), tuple(dict.fromkeys(prefixes)), everything)


def _expand(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend(OPENAI_PATHS if item == OPENAI else (item,))
    return out
