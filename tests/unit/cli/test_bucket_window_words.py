import math

import pytest

from sidecar.cli.report import bucket_window_words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(300.0, "its last 5 min"), (86400.0, "its last 24 h"), (90.0, "its last 90 s"), (7.5, "its last 7.5 s")],
)
def test_the_buckets_reach_is_said_in_the_largest_whole_unit(seconds: float, words: str) -> None:
    assert bucket_window_words(seconds) == words


@pytest.mark.parametrize("seconds", [None, 0.0, -1.0, math.nan, math.inf])
def test_a_reach_the_sidecar_did_not_report_or_that_cannot_be_true_is_said_to_be_unknown(
    seconds: float | None,
) -> None:
    assert "does not report" in bucket_window_words(seconds)
