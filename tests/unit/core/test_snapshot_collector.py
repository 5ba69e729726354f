"""What a snapshot leaves for the cyclic collector to walk (issue #11: /healthz within 100 ms throughout).

A window holds 13 snapshots; each full pass of CPython's collector walks every object it still tracks, with the
event loop stalled meanwhile. The counters and histograms a snapshot keeps must be untracked by the first two full
passes that meet them, so that later passes walk nothing that grows with the number of series an engine exposes
(benchmarks/collector_pause.py times the passes).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from enum import Enum

from sidecar.core.catalog import Role
from sidecar.core.snapshot import Counter, Histogram, ModelSnapshot, Snapshot
from sidecar.scrape.fetch import parse_payload
from tests.support.hostile_engine import admitted_worst_body, histogram_body


def _reachable(root: object) -> Iterator[object]:
    """What the snapshot's models hold, short of classes and enum members (shared by the whole process)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if not isinstance(obj, type | Enum):
            stack.extend(gc.get_referents(obj))


def _tracked_from(snapshot: Snapshot) -> int:
    # The first full passes that meet a snapshot may still walk its counter keys: a key tuple is untracked only
    # by a pass that reaches it after its series tuple was untracked, and a pass's order is not ours to choose.
    # Two passes always suffice; every pass after them must walk nothing per series.
    gc.collect()
    gc.collect()
    return sum(1 for obj in _reachable(snapshot.models) if gc.is_tracked(obj) and not isinstance(obj, type | Enum))


def test_the_objects_a_full_collection_walks_do_not_grow_with_the_counters_of_a_scrape() -> None:
    small, _, _ = parse_payload(admitted_worst_body(1, engines=50, label_chars=100), 1.0)
    large, _, _ = parse_payload(admitted_worst_body(1, engines=2_000, label_chars=100), 1.0)
    assert len(large.models["tiny"].counters) == 6_000
    assert _tracked_from(large) == _tracked_from(small)


def test_the_objects_a_full_collection_walks_do_not_grow_with_the_histograms_of_a_scrape() -> None:
    small, _, _ = parse_payload(histogram_body(200_000), 1.0)
    large, _, _ = parse_payload(histogram_body(4_000_000), 1.0)
    assert len(large.models["tiny"].histograms) > 10 * len(small.models["tiny"].histograms)
    assert _tracked_from(large) == _tracked_from(small)


def test_counters_read_back_as_written_under_their_role_whatever_mapping_built_them() -> None:
    key = (Role.ACCEPTED_PER_POS, (("engine", "0"),), "1")
    hkey = ("ttft", (("engine", "0"),))
    histogram = Histogram(((0.1, 2.0), (float("inf"), 3.0)), 3.0, 5.0, 3.0)
    model = ModelSnapshot("m", {key: Counter(7.0, 5.0)}, {}, {hkey: histogram})
    assert model.counters[key] == Counter(7.0, 5.0)
    assert next(k[0] for k in model.counters) is Role.ACCEPTED_PER_POS
    assert model.histograms[hkey] == histogram
    assert model == ModelSnapshot("m", {key: Counter(7.0, 5.0)}, {}, {hkey: histogram})
    assert model != ModelSnapshot("m", {key: Counter(8.0, 5.0)}, {}, {hkey: histogram})
