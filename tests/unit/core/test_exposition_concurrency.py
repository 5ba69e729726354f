"""One SampleParser shared by threads (the sidecar's scrape loop and a report): its caches never break a parse."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from sidecar.core import exposition
from sidecar.core.exposition import SampleParser


@pytest.fixture
def tiny_caches_and_eager_thread_switches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A cache that is cleared on nearly every call, and threads switching as often as CPython allows.
    monkeypatch.setattr(exposition, "_MAX_BLOBS", 2)
    monkeypatch.setattr(exposition, "_MAX_LAYOUTS", 2)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def _payload(engine: int) -> str:
    lines = []
    for le in ("0.1", "0.5", "1.0", "+Inf"):
        lines.append(f'm_bucket{{engine="{engine}",le="{le}",model_name="x"}} {engine}')
        lines.append(f'm_bucket{{model_name="x",engine="{engine}",le="{le}"}} {engine}')
    return ("\n".join(lines) + "\n") * 20


@pytest.mark.usefixtures("tiny_caches_and_eager_thread_switches")
def test_threads_sharing_a_parser_get_the_same_samples_as_one_thread_alone() -> None:
    parser = SampleParser(["m_bucket"])
    payloads = [_payload(e) for e in range(8)]
    expected = [SampleParser(["m_bucket"]).parse(p) for p in payloads]
    errors: list[BaseException] = []
    mismatches: list[int] = []

    def work(index: int) -> None:
        try:
            for _ in range(30):
                if parser.parse(payloads[index]) != expected[index]:
                    mismatches.append(index)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not mismatches
    assert all(r.bad_lines == 0 and len(r.samples) == 160 for r in expected)
