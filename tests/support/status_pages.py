"""A StatusPage with plausible defaults, for tests of the /status rendering."""

from __future__ import annotations

from sidecar.core.advice import AdviceConfig, Slo, advise
from sidecar.core.verdict import Thresholds
from sidecar.web.status_page import Health, StatusPage
from tests.support.stats_builders import bucket, model

NOW = 1_800_000_000.0


EVIL = '<script>alert("x")</script>&'


def page(**changes: object) -> StatusPage:
    m = model(model_name="tiny")
    base = StatusPage(
        now=NOW,
        health=Health("http://127.0.0.1:8000", True, "success", "", NOW - 3, {"success": 12, "timeout": 1}),
        thresholds=Thresholds(),
        models=(m,),
        advice=(advise(m, [bucket("0", 70, 0.9), bucket("[1,+Inf)", 30, 0.3)], AdviceConfig(slo=Slo.TPOT)),),
        trend=(),
        buckets=None,
        actuator=None,
        decisions=(),
    )
    fields = {**base.__dict__, **changes}
    return StatusPage(**fields)
