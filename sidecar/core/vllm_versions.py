"""Which speculative-config keys each vLLM version accepts, and which vLLM version an image runs.

vLLM builds its speculative config from the JSON of ``--speculative-config`` (and ``--spec-method``,
``--spec-model``, ``--spec-tokens``) and refuses to start on a key it does not know: the config class forbids
extra fields (0.32, 0.33 and 0.34 alike). Keys also disappear between versions: 0.34 dropped
``disable_padded_drafter_batch`` and ``use_heterogeneous_vocab``. So args that were removed while one version
ran can stop a newer one from starting when they are put back; :func:`rejected_keys` says which keys would.

The key lists are the fields of vLLM's ``SpeculativeConfig`` as read in each version's wheel (docs/engines.md,
"Versions"). Only these versions are checked key by key; on a newer version only the keys known to be dropped
are, and an older or unknown version is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Version = tuple[int, int, int]

_KEYS_0_32 = frozenset(
    {
        "enforce_eager",
        "num_speculative_tokens",
        "model",
        "method",
        "draft_tensor_parallel_size",
        "tensor_parallel_size",
        "quantization",
        "moe_backend",
        "attention_backend",
        "kv_cache_dtype",
        "max_model_len",
        "revision",
        "code_revision",
        "index_share_for_mtp_iteration",
        "disable_padded_drafter_batch",
        "disable_eagle_block_drop",
        "use_local_argmax_reduction",
        "use_heterogeneous_vocab",
        "prompt_lookup_max",
        "prompt_lookup_min",
        "parallel_drafting",
        "target_model_config",
        "target_parallel_config",
        "num_speculative_tokens_per_batch_size",
        "draft_model_config",
        "draft_parallel_config",
        "suffix_decoding_max_tree_depth",
        "suffix_decoding_max_cached_requests",
        "suffix_decoding_max_spec_factor",
        "suffix_decoding_min_token_prob",
        "draft_load_config",
        "rejection_sample_method",
        "synthetic_acceptance_rates",
        "synthetic_acceptance_length",
        "enable_adaptive_verification",
        "draft_sample_method",
        "dspark_draft_topk",
    }
)
_KEYS_0_33 = _KEYS_0_32 | {
    "disable_lookahead_block_hashes",
    "draft_lm_head_quantization",
    "xpress_topc",
    "fly_window_size",
    "fly_entropy_threshold",
    "fly_entropy_top_k",
}
# Keys a version dropped: rejected from that version on (by the newer versions too, as far as is known).
DROPPED: dict[str, Version] = {
    "disable_padded_drafter_batch": (0, 34, 0),
    "use_heterogeneous_vocab": (0, 34, 0),
}
_KEYS_0_34 = (_KEYS_0_33 - DROPPED.keys()) | {
    "draft_decode_context_parallel_size",
    "suffix_decoding_corpus_tokens",
    "speculator_options",
}
# (major, minor) -> the keys ``--speculative-config`` may carry on that release line.
ACCEPTED: dict[tuple[int, int], frozenset[str]] = {(0, 32): _KEYS_0_32, (0, 33): _KEYS_0_33, (0, 34): _KEYS_0_34}
CHECKED = tuple(sorted(ACCEPTED))  # the release lines checked key by key

# The tag of a vLLM image: v0.34.0, 0.34.0, v0.34.0-cu130, 0.33 ... (a digest or "latest" names no version).
_TAG_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+._].*)?$")


def image_version(image: str | None) -> Version | None:
    """The vLLM version an image reference names in its tag, if its repository is a vLLM image.

    ``vllm/vllm-openai:v0.34.0`` gives (0, 34, 0); ``registry.local/ml/vllm-cpu:0.33.1-avx512`` (0, 33, 1). A
    digest, ``latest``, ``nightly`` or a repository without "vllm" in its name gives None: a custom image's
    tag need not be vLLM's version, and a wrong version would refuse a good config.
    """
    if not image:
        return None
    name = image.split("@", 1)[0]
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:  # no tag (a registry port is not one)
        return None
    if "vllm" not in repository.rsplit("/", 1)[-1].lower():
        return None
    match = _TAG_VERSION.match(tag)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def rejected_keys(keys: Iterable[str], version: Version | None) -> tuple[str, ...]:
    """The keys among ``keys`` that vLLM ``version`` would refuse to start with, sorted.

    On a checked release line: every key it does not know. On a newer one: the keys known to be dropped. On
    an older or unknown version: none (not checked).
    """
    if version is None:
        return ()
    wanted = {k.replace("-", "_") for k in keys}
    line = version[:2]
    if line in ACCEPTED:
        return tuple(sorted(wanted - ACCEPTED[line]))
    if line > CHECKED[-1]:
        return tuple(sorted(k for k in wanted if k in DROPPED and DROPPED[k] <= version))
    return ()


def version_text(version: Version) -> str:
    return ".".join(map(str, version))
