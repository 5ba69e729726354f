"""The JSON report's shape (sidecar.core.report): scripts read the same keys before the first window as after."""

from __future__ import annotations

from sidecar.core.report import report_body


def test_before_the_first_window_the_report_has_the_window_keys_with_nothing_in_them() -> None:
    body = report_body(None, None, [], {}, 0.5)
    assert body["engine"] is None and body["window_seconds"] is None and body["models"] == []
    assert body["buckets"] == []
