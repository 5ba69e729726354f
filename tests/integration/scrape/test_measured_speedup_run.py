"""`spec-sidecar run` learns this engine's speedup from its own TPOT, with speculation on and then off.

The engine is a real HTTP server whose /metrics move like vLLM's while the sidecar watches: with speculation on,
every scrape adds drafts (L = 3, k = 4) and ten requests whose TPOT falls in the 25-50 ms bucket; then the engine
restarts without speculation (its series start again from 0, the spec-decode families are gone) and its requests
fall in the 50-75 ms bucket. The sidecar must say 62.5 / 37.5 = 1.667x, c_eff = (3 / 1.667 - 1) / 4 = 0.2, and
that the break-even (0.2) is in force, on /metrics, /api/report and /status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.support.http_stub import serve_http
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

TPOT_BOUNDS = ("0.01", "0.025", "0.05", "0.075", "0.1", "+Inf")
LABELS = 'engine="0",model_name="tiny"'
SPEC = "vllm:spec_decode_num_"


@dataclass
class Engine:
    """Counters that grow at each scrape, as a busy engine's do; ``restart`` starts them again."""

    speculation: bool = True
    created: float = 1_700_000_000.0
    scrapes: int = 0
    tpot: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TPOT_BOUNDS, 0.0))
    drafts: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def restart(self, *, speculation: bool) -> None:
        with self.lock:
            self.speculation, self.created, self.drafts = speculation, self.created + 1000.0, 0.0
            self.tpot = dict.fromkeys(TPOT_BOUNDS, 0.0)

    def metrics(self) -> str:
        with self.lock:
            self.scrapes += 1
            # Ten requests per scrape: 37.5 ms per token with speculation, 62.5 ms without (bucket midpoints).
            first = 2 if self.speculation else 3
            for i, bound in enumerate(TPOT_BOUNDS):
                self.tpot[bound] += 10.0 if i >= first else 0.0
            lines = [
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{LABELS}}} 3.0",
                "# TYPE vllm:request_time_per_output_token_seconds histogram",
            ]
            for bound, count in self.tpot.items():
                lines.append(f'vllm:request_time_per_output_token_seconds_bucket{{{LABELS},le="{bound}"}} {count}')
            count = self.tpot["+Inf"]
            lines += [
                f"vllm:request_time_per_output_token_seconds_count{{{LABELS}}} {count}",
                f"vllm:request_time_per_output_token_seconds_created{{{LABELS}}} {self.created}",
            ]
            if self.speculation:
                self.drafts += 100.0
                d = self.drafts
                for name, value in (("drafts", d), ("draft_tokens", 4 * d), ("accepted_tokens", 2 * d)):
                    lines += [
                        f"# TYPE {SPEC}{name} counter",
                        f"{SPEC}{name}_total{{{LABELS}}} {value}",
                        f"{SPEC}{name}_created{{{LABELS}}} {self.created}",
                    ]
                lines.append(f"# TYPE {SPEC}accepted_tokens_per_pos counter")
                for position, share in enumerate((0.8, 0.6, 0.4, 0.2)):
                    lines.append(f'{SPEC}accepted_tokens_per_pos_total{{{LABELS},position="{position}"}} {share * d}')
            return "\n".join(lines) + "\n"


@contextmanager
def engine_server(engine: Engine) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = engine.metrics().encode() if self.path == "/metrics" else b"{}"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        yield url


FLAGS = ("--scrape-interval", "0.25", "--scrape-timeout", "1", "--window", "1", "--min-draft-tokens", "100")
NGRAM = '{"method":"ngram","num_speculative_tokens":4}'


def on_windows(sidecar: SidecarProcess, state: str) -> float:
    return sidecar.value("specdecode_measured_speedup_windows", model_name="tiny", speculation=state) or 0.0


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, SidecarProcess]]:
    """One engine and one sidecar for the module: learning takes about 15 s of windows."""
    tmp_path: Path = tmp_path_factory.mktemp("measured")
    engine = Engine()
    with (
        engine_server(engine) as url,
        run_sidecar(tmp_path, "--vllm-url", url, "--speculative-config", NGRAM, *FLAGS) as sidecar,
    ):
        wait_until(lambda: sidecar.value("specdecode_target_up") == 1.0, 15, sidecar.log)
        # The draft cost is assumed from the config, and says so; nothing is measured yet.
        assert sidecar.value("specdecode_draft_cost_ratio", model_name="tiny", source="assumed") == 0.0
        assert sidecar.value("specdecode_measured_speedup", model_name="tiny") is None
        wait_until(lambda: engine.scrapes >= 4 * 8, 30, sidecar.log)  # 8 windows with speculation on
        engine.restart(speculation=False)
        wait_until(lambda: on_windows(sidecar, "off") >= 5, 30, sidecar.log)
        yield engine, sidecar


def test_the_measured_speedup_effective_cost_and_break_even_are_exported(
    measured: tuple[Engine, SidecarProcess],
) -> None:
    _, sidecar = measured
    assert on_windows(sidecar, "on") >= 5
    assert sidecar.value("specdecode_measured_speedup", model_name="tiny") == pytest.approx(62.5 / 37.5, rel=1e-6)
    low = sidecar.value("specdecode_measured_speedup_low", model_name="tiny")
    high = sidecar.value("specdecode_measured_speedup_high", model_name="tiny")
    assert low is not None and high is not None and low < 62.5 / 37.5 < high
    assert sidecar.value("specdecode_effective_draft_cost_ratio", model_name="tiny") == pytest.approx(0.2, abs=1e-6)
    breakeven = sidecar.value("specdecode_measured_breakeven_acceptance_ratio", model_name="tiny")
    assert breakeven == pytest.approx(0.2, abs=1e-6)
    assert sidecar.value("specdecode_measured_breakeven_in_force", model_name="tiny") == 1.0


def test_api_report_and_status_show_the_measured_speedup_beside_the_modelled_one(
    measured: tuple[Engine, SidecarProcess],
) -> None:
    _, sidecar = measured
    model = httpx.get(sidecar.url + "/api/report", timeout=5).json()["models"][0]
    assert model["draft_cost"]["source"] == "assumed"
    m = model["measured_speedup"]
    assert m["speedup"] == pytest.approx(1.6667, abs=1e-3) and m["in_force"] is True
    assert m["in_force_threshold"] == pytest.approx(0.2, abs=1e-6) and m["load_bands"] == ["2-4"]
    page = httpx.get(sidecar.url + "/status", timeout=5).text
    assert "measured speedup" in page and "1.667 [" in page and "faster with speculation" in page
    assert "0.20 (measured)" in page  # what the policy judges against


def test_the_load_band_of_the_measurement_is_shown_and_one_band_is_too_thin_for_a_schedule(
    measured: tuple[Engine, SidecarProcess],
) -> None:
    _, sidecar = measured
    schedule = httpx.get(sidecar.url + "/api/report", timeout=5).json()["models"][0]["load_schedule"]
    [band] = schedule["bands"]
    assert band["source"] == "measured" and band["verdict"] == "pays"
    assert band["speedup"] == pytest.approx(62.5 / 37.5, rel=1e-6)
    assert schedule["cut"] is None and schedule["reason"].startswith("data too thin")
    value = sidecar.value("specdecode_load_band_speedup", model_name="tiny", band=band["band"], source="measured")
    assert value == pytest.approx(62.5 / 37.5, rel=1e-6)
    assert sidecar.value("specdecode_proposed_schedule_cut", model_name="tiny", source="measured") is None
    assert "batch size" in httpx.get(sidecar.url + "/status", timeout=5).text


def test_report_with_tap_shows_what_the_running_sidecar_measured(measured: tuple[Engine, SidecarProcess]) -> None:
    engine, sidecar = measured
    with engine_server(engine) as url:  # the same engine, served again for the report's own scrape
        table = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "report", url, "--tap", sidecar.url],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}, check=True,
        ).stdout  # fmt: skip
        as_json = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "report", url, "--tap", sidecar.url, "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    assert "measured by the sidecar at" in table and "1.667" in table and "0.20" in table
    assert "faster with speculation" in table and model_finding(as_json) == "faster"
    model = json.loads(as_json)["models"][0]
    assert model["measured_speedup"]["speedup"] == pytest.approx(1.6667, abs=1e-3)
    assert model["draft_cost"]["source"] == "unknown"  # this report was given no speculative config


def model_finding(report_json: str) -> object:
    return json.loads(report_json)["models"][0]["measured_speedup"]["finding"]
