from __future__ import annotations

import pytest

from sidecar.core.forward_paths import OPENAI_PATHS, parse_forward_paths

ADMIN = (
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/start_profile",
    "/stop_profile",
    "/scale_elastic_ep",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/pause",
    "/resume",
    "/update_weights",
    "/server_info",
    "/tokenizer_info",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/inference/v1/generate",
    "/v1/chat/completions/render",
)


def test_the_default_forwards_the_openai_api_and_vllms_client_probes() -> None:
    paths = parse_forward_paths("openai")
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/embeddings", "/health", "/tokenize"):
        assert paths.allows(path), path
    assert paths.allows("/v1/responses/resp_123") and paths.allows("/v1/responses/resp_123/cancel")


@pytest.mark.parametrize("path", ADMIN)
def test_the_default_forwards_no_admin_or_internal_route(path: str) -> None:
    assert not parse_forward_paths("openai").allows(path)


def test_the_two_hottest_paths_are_exact_matches_one_set_lookup_away() -> None:
    exact = parse_forward_paths("openai").exact
    assert "/v1/completions" in exact and "/v1/chat/completions" in exact


@pytest.mark.parametrize(
    "path", ["/v1/responses/../../sleep", "/v1/responses/./x", "/v1/responses/a/../../../reset_prefix_cache"]
)
def test_a_dot_segment_never_matches_a_prefix(path: str) -> None:
    assert not parse_forward_paths("openai").allows(path)


def test_a_prefix_covers_what_is_under_it_and_not_its_siblings() -> None:
    paths = parse_forward_paths("/echo/*")
    assert paths.allows("/echo/a") and paths.allows("/echo/a/b")
    assert not paths.allows("/echo") and not paths.allows("/echoes/a")


def test_groups_paths_and_prefixes_combine_and_star_forwards_everything() -> None:
    paths = parse_forward_paths(" openai , /sleep, /x/* ")
    assert paths.allows("/sleep") and paths.allows("/x/y") and paths.allows("/v1/models")
    assert not paths.allows("/wake_up")
    assert parse_forward_paths("*").allows("/anything/at/all")
    assert not parse_forward_paths("").allows("/v1/completions")


@pytest.mark.parametrize("bad", ["v1/completions", "everything", "/v1/*/x", "/a*"])
def test_an_item_that_is_neither_a_group_a_path_nor_a_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="tap path"):
        parse_forward_paths(bad)


def test_every_path_in_the_openai_group_is_a_path_or_a_prefix() -> None:
    assert all(p.startswith("/") and ("*" not in p or p.endswith("/*")) for p in OPENAI_PATHS)
