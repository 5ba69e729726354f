"""`spec-sidecar report` as a user runs it: files and URLs, one source or a window of two, JSON or tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.payloads import vllm_payload
from tests.support.replay import metrics_replay

MODEL_KEYS = {
    "model_name",
    "speculation",
    "window",
    "acceptance_ratio",
    "mean_acceptance_length",
    "alpha_estimate",
    "num_speculative_tokens",
    "position_acceptance",
    "latency_seconds",
    "p99_p50_ratio",
    "verdict",
}


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "report", *args], capture_output=True, text=True, timeout=60, check=False
    )


def report_json(*args: str) -> dict[str, Any]:
    done = report("--json", *args)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_two_files_give_the_window_between_them(tmp_path: Path) -> None:
    before, after = tmp_path / "before.txt", tmp_path / "after.txt"
    before.write_text(vllm_payload(drafts=100, draft_tokens=400, accepted=300, per_position=(90, 80, 70, 60)))
    after.write_text(vllm_payload(drafts=150, draft_tokens=600, accepted=340, per_position=(110, 90, 76, 64)))
    out = report_json("--min-draft-tokens", "100", str(before), str(after))
    assert out["engine"] == "vllm"
    (model,) = out["models"]
    assert set(model) >= MODEL_KEYS
    assert model["window"] == {"drafts": 50, "draft_tokens": 200, "accepted_tokens": 40}
    assert model["acceptance_ratio"] == 40 / 200
    assert model["mean_acceptance_length"] == 1 + 40 / 50
    assert model["verdict"] == "disable"
    # Per position +20, +10, +6, +4 (the 40 accepted) over 50 drafts.
    assert model["position_acceptance"] == [20 / 50, 10 / 50, 6 / 50, 4 / 50]


def test_one_source_is_totals_since_engine_start(tmp_path: Path) -> None:
    source = tmp_path / "now.txt"
    source.write_text(vllm_payload(drafts=100, draft_tokens=400, accepted=300, per_position=(90, 80, 70, 60)))
    (model,) = report_json(str(source))["models"]
    assert model["acceptance_ratio"] == 300 / 400
    assert model["verdict"] == "keep"


def test_a_window_with_too_few_draft_tokens_is_no_data_and_nothing_is_zero(tmp_path: Path) -> None:
    before, after = tmp_path / "a.txt", tmp_path / "b.txt"
    before.write_text(vllm_payload(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6)))
    after.write_text(vllm_payload(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6)))
    (model,) = report_json(str(before), str(after))["models"]
    assert model["verdict"] == "no-data"
    assert model["acceptance_ratio"] is None
    assert model["mean_acceptance_length"] is None
    assert all(q is None for lat in model["latency_seconds"].values() for q in lat.values())


def test_speculation_off_is_reported_as_off_with_null_numbers(tmp_path: Path) -> None:
    source = tmp_path / "plain.txt"
    source.write_text(vllm_payload(ttft_buckets=(("0.5", 3), ("+Inf", 4))))
    (model,) = report_json(str(source))["models"]
    assert model["speculation"] == "off"
    assert model["window"] == {"drafts": None, "draft_tokens": None, "accepted_tokens": None}
    assert model["acceptance_ratio"] is None
    assert model["num_speculative_tokens"] is None
    assert model["verdict"] == "no-data"
    assert model["latency_seconds"]["ttft"]["p50"] == 0.5 * (2 / 3)


def test_a_url_source_is_scraped_with_the_classic_text_format() -> None:
    with metrics_replay() as replay:
        replay.serve(vllm_payload(drafts=100, draft_tokens=400, accepted=100, per_position=(40, 30, 20, 10)))
        (model,) = report_json(replay.url)["models"]
        assert replay.accept_headers[-1].startswith("text/plain; version=0.0.4")
    assert model["acceptance_ratio"] == 100 / 400


def test_a_window_of_impossible_numbers_is_reported_invalid_with_its_reason(tmp_path: Path) -> None:
    before, after = tmp_path / "before.txt", tmp_path / "after.txt"
    before.write_text(vllm_payload(drafts=100, draft_tokens=400, accepted=300, per_position=(90, 80, 70, 60)))
    after.write_text(vllm_payload(drafts=150, draft_tokens=600, accepted=-37_000, per_position=(110, 90, 76, 64)))
    (model,) = report_json(str(before), str(after))["models"]
    assert model["verdict"] == "invalid"
    assert model["invalid"]["reason"] == "negative"
    assert model["acceptance_ratio"] is None and model["mean_acceptance_length"] is None
    human = report(str(before), str(after))
    assert human.returncode == 0, human.stderr
    assert "invalid" in human.stdout and "negative" in human.stdout and "-37000" in human.stdout


def test_the_human_report_shows_the_verdict_and_the_latency_table(tmp_path: Path) -> None:
    source = tmp_path / "now.txt"
    source.write_text(vllm_payload(drafts=100, draft_tokens=400, accepted=300, per_position=(90, 80, 70, 60)))
    done = report(str(source))
    assert done.returncode == 0, done.stderr
    assert "keep" in done.stdout
    assert "0.750" in done.stdout
    assert "P99/P50" in done.stdout


def test_unusable_sources_fail_with_one_clear_line(tmp_path: Path) -> None:
    missing = report(str(tmp_path / "missing.txt"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    assert "no known engine metrics" in report(str(junk)).stderr
    refused = report("http://127.0.0.1:9/metrics")
    assert refused.returncode == 2
    assert "unreachable" in refused.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


def _bucket(bucket: str, requests: int, draft: int, accepted: int, p10: float) -> dict[str, Any]:
    return {
        "model_name": "tiny",
        "temperature_bucket": bucket,
        "window_requests": requests,
        "window_draft_tokens": draft,
        "window_accepted_tokens": accepted,
        "acceptance_ratio": accepted / draft,
        "p10": p10,
        "p50": accepted / draft,
        "p90": min(1.0, accepted / draft + 0.1),
        "requests_total": requests,
        "draft_tokens_total": draft,
        "accepted_tokens_total": accepted,
        "sources": {"per_request_metrics": requests},
    }


def test_with_a_sidecar_tap_report_shows_the_buckets_and_calls_out_the_mixed_workload_trap(tmp_path: Path) -> None:
    # The engine's aggregate is healthy (0.75) ...
    engine = tmp_path / "engine.txt"
    engine.write_text(vllm_payload(drafts=100, draft_tokens=4000, accepted=3000, per_position=(90, 80, 70, 60)))
    # ... while the tap saw 30 % of requests at temperature >= 1 accepting only 0.2.
    buckets = [_bucket("0", 70, 3000, 2800, 0.85), _bucket("[1,+Inf)", 30, 1000, 200, 0.05)]
    with metrics_replay() as sidecar:
        sidecar.serve(json.dumps({"models": [], "buckets": buckets}))
        out = report_json("--tap", sidecar.url, str(engine))
        human = report("--tap", sidecar.url, str(engine))
    assert [b["temperature_bucket"] for b in out["buckets"]] == ["0", "[1,+Inf)"]
    (advice,) = out["advice"]
    trap = next(f for f in advice["findings"] if f["condition"] == "mixed-workload trap")
    assert trap["status"] == "bad", trap
    assert "30%" in trap["says"]
    assert human.returncode == 0, human.stderr
    assert "per temperature bucket" in human.stdout
    assert "disable" in human.stdout  # the hot bucket's own verdict
    assert "looks healthy" in human.stdout
    # A sidecar from before bucket_window_seconds was in /api/report: the title says the reach is unknown.
    assert "which that sidecar does not report" in " ".join(human.stdout.split())


def test_report_names_how_far_back_the_taps_buckets_reach(tmp_path: Path) -> None:
    engine = tmp_path / "engine.txt"
    engine.write_text(vllm_payload(drafts=100, draft_tokens=4000, accepted=3000, per_position=(90, 80, 70, 60)))
    served = {"models": [], "buckets": [_bucket("0", 70, 3000, 2800, 0.85)], "bucket_window_seconds": 300}
    with metrics_replay() as sidecar:
        sidecar.serve(json.dumps(served))
        out = report_json("--tap", sidecar.url, str(engine))
        human = report("--tap", sidecar.url, str(engine))
    assert out["bucket_window_seconds"] == 300
    assert human.returncode == 0, human.stderr
    assert "requests seen by the tap, its last 5 min" in " ".join(human.stdout.split())


def test_an_unreachable_tap_is_one_clear_line(tmp_path: Path) -> None:
    engine = tmp_path / "engine.txt"
    engine.write_text(vllm_payload(drafts=1, draft_tokens=4, accepted=1, per_position=(1, 0, 0, 0)))
    done = report("--tap", "http://127.0.0.1:9", str(engine))
    assert done.returncode == 2
    assert "GET http://127.0.0.1:9/api/report: ConnectError" in done.stderr
    assert "give --tap the address of a running `spec-sidecar run`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


HOSTILE = "[/]evil[bold red]x[/bold red] [link=http://example.invalid/]y\x1b[2J\x07"


def test_untrusted_names_are_printed_as_text_never_read_as_markup_or_terminal_controls(tmp_path: Path) -> None:
    engine = tmp_path / "engine.txt"
    payload = vllm_payload(model=HOSTILE, drafts=100, draft_tokens=4000, accepted=3000, per_position=(90, 80, 70, 60))
    engine.write_text(payload)
    bucket = _bucket("[1,+Inf)[/]", 30, 1000, 200, 0.05) | {"model_name": HOSTILE}
    with metrics_replay() as sidecar:
        sidecar.serve(json.dumps({"models": [], "buckets": [bucket]}))
        done = report("--tap", sidecar.url, "--json", str(engine))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["models"][0]["model_name"] == HOSTILE
        wide = {**os.environ, "COLUMNS": "300"}  # no name cut short in a panel title or wrapped in a cell
        human = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "report", "--tap", sidecar.url, str(engine)],
            capture_output=True, text=True, timeout=60, check=False, env=wide,
        )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "\x1b" not in human.stdout and "\x07" not in human.stdout
    shown = HOSTILE.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert human.stdout.count(shown) >= 3  # the report's panel, the bucket table, the advice panel
    assert "[1,+Inf)[/]" in human.stdout


def test_report_recommends_the_k_with_the_highest_expected_speedup_and_says_where_c_comes_from(
    tmp_path: Path,
) -> None:
    source = tmp_path / "now.txt"
    # α̂ = 0.5 at k = 5 (positions 0.5, 0.25, ...), a draft model of c = 0.16: K = 2 pays best (docs/math.md).
    source.write_text(
        vllm_payload(drafts=4000, draft_tokens=20000, accepted=3875, per_position=(2000, 1000, 500, 250, 125))
    )
    (model,) = report_json("--draft-cost-ratio", "0.16", str(source))["models"]
    size = model["right_size_k"]
    assert size["current"] == 5
    assert size["recommended"] == 2
    assert size["low"] <= 2 <= size["high"] < 5
    assert size["distinguishable"] is True
    assert size["draft_cost"]["source"] == "configured"
    assert size["expected_speedup"] > size["expected_speedup_at_current"]
    assert [row["k"] for row in size["per_k"]] == [1, 2, 3, 4, 5]
    text = report("--draft-cost-ratio", "0.16", str(source))
    assert text.returncode == 0, text.stderr
    assert "right-sized K" in text.stdout and "K = 2 would give" in " ".join(text.stdout.split())
    # Without a c, drafts are taken as free: no smaller K is recommended, and the report says how to set one.
    (unknown,) = report_json(str(source))["models"]
    assert unknown["right_size_k"]["recommended"] == 5
    assert "--draft-cost-ratio" in unknown["right_size_k"]["words"]


def test_with_speculation_off_there_is_no_k_to_right_size(tmp_path: Path) -> None:
    source = tmp_path / "off.txt"
    source.write_text(vllm_payload())
    (model,) = report_json(str(source))["models"]
    assert model["right_size_k"] is None


def test_with_a_sidecar_tap_report_shows_the_load_schedule_it_proposes(tmp_path: Path) -> None:
    engine = tmp_path / "engine.txt"
    engine.write_text(vllm_payload(drafts=100, draft_tokens=4000, accepted=3000, per_position=(90, 80, 70, 60)))
    schedule = {
        "cut": 2, "k": 4, "max_num_seqs": 256, "value": [[1, 2, 4], [3, 256, 0]], "source": "measured",
        "reason": "speculation pays at batch size 2 and hurts at 5-8",
        "words": "K = 4 up to batch size 2, 0 above (measured): speculation pays at batch size 2 and hurts at 5-8",
        "bands": [
            {"band": "2", "speedup": 1.4, "verdict": "pays", "source": "measured"},
            {"band": "5-8", "speedup": 0.8, "verdict": "hurts", "source": "measured"},
        ],
    }  # fmt: skip
    served = {"models": [{"model_name": "tiny", "load_schedule": schedule}], "buckets": []}
    with metrics_replay() as sidecar:
        sidecar.serve(json.dumps(served))
        out = report_json("--tap", sidecar.url, str(engine))
        human = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "report", "--tap", sidecar.url, str(engine)],
            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "300"},
        )  # fmt: skip
    (model,) = out["models"]
    assert model["load_schedule"]["value"] == [[1, 2, 4], [3, 256, 0]]
    assert human.returncode == 0, human.stderr
    text = " ".join(human.stdout.split())
    assert "load schedule" in text and "K = 4 up to batch size 2, 0 above (measured)" in text
    assert "5-8: 0.80 hurts (measured)" in text


def test_a_report_of_scrapes_has_no_load_schedule_to_show(tmp_path: Path) -> None:
    source = tmp_path / "engine.txt"
    source.write_text(vllm_payload(drafts=100, draft_tokens=4000, accepted=3000, per_position=(90, 80, 70, 60)))
    (model,) = report_json(str(source))["models"]
    assert "load_schedule" in model and model["load_schedule"] is None
