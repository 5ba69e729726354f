"""docs/metrics.md and the exporter must agree on every family: name, type and label names."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.measured_speedup import SpeedSample, with_samples
from sidecar.core.request_acceptance import SOURCE_METRICS, SpecCounts
from sidecar.scrape.fetch import ScrapeResult, parse_payload
from sidecar.settings import Settings
from sidecar.tap.recorder import RequestRecord
from sidecar.wiring import build_sidecar
from tests.support.payloads import vllm_payload

DOC = Path(__file__).parents[3] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(specdecode_[a-z0-9_]+)` \| (gauge|counter|histogram) \|([^|]*)\|")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            labels = frozenset(re.findall(r"`([a-z_]+)`", m.group(3)))
            rows[m.group(1)] = (m.group(2), labels)
    return rows


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llm
spec:
  template:
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai
          args: ["--model", "m", "--speculative-config", '{"method":"ngram","num_speculative_tokens":4}']
"""


def exported_by_a_busy_sidecar(tmp_path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """A sidecar fed two scrapes of an engine with traffic in between, requests through its tap, and a
    controller acting on a real manifest file, so that every family has data."""
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(MANIFEST)
    settings = Settings(
        baseline_p99_p50={"ttft": 2.0},
        deployment_file=str(manifest),
        trip_windows=1,
        warmup_windows=0,  # act on the first window: this sidecar sees two scrapes in all
        min_draft_tokens=100,
        window=10,
        prometheus_url="http://127.0.0.1:9",  # fleet mode's families too (its loop is not started here)
        prometheus_selector='job="vllm"',
    )
    sidecar = build_sidecar(settings)
    full = (("0.1", 0.0), ("1.0", 0.0), ("+Inf", 0.0))
    grown = (("0.1", 50.0), ("1.0", 90.0), ("+Inf", 100.0))
    before = vllm_payload(drafts=0, draft_tokens=0, accepted=0, per_position=(0, 0), ttft_buckets=full)
    after = vllm_payload(drafts=100, draft_tokens=200, accepted=60, per_position=(40, 20), ttft_buckets=grown)
    after += 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25\n'
    after += 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 500\n'
    for taken_at, text in ((1000.0, before), (1010.0, after)):
        snapshot, _, _ = parse_payload(text, taken_at)
        sidecar.monitor.observe(ScrapeResult("success", snapshot, 0.01), taken_at)
    assert sidecar.controller is not None and sidecar.monitor.view.stats is not None
    # Windows of TPOT with speculation on and off at the same load, as the scrape loop learns them over time.
    samples = [
        SpeedSample(float(i), on, 2.0, 0.04 if on else 0.05, 50.0, None, None, 2.2 if on else None, 4 if on else None)
        for i in range(3)
        for on in (True, False)
    ]
    # In fleet mode the measured families are the fleet's (its Lease holder's), learned from the fleet's windows.
    assert sidecar.fleet is not None
    sidecar.fleet.speed = with_samples(sidecar.fleet.speed, "tiny", samples)
    decision = sidecar.controller.step(sidecar.monitor.view.stats, 1010.0)
    assert decision is not None and str(decision.action) == "disable", decision
    sidecar.controller.step(sidecar.monitor.view.stats, 1011.0)  # reads the target back: the toggle's record
    manifest.write_text("{ not: [valid")  # the next read of the target fails: an actuator error
    sidecar.controller.step(sidecar.monitor.view.stats, 1100.0)
    # Windows at a higher load where speculation is slower: a load schedule is proposed (its families have data).
    busy = [
        SpeedSample(float(i), on, 8.0, 0.06 if on else 0.05, 50.0, None, None, 2.2 if on else None, 4 if on else None)
        for i in range(3)
        for on in (True, False)
    ]
    sidecar.fleet.speed = with_samples(sidecar.fleet.speed, "tiny", busy)
    for draft, accepted in ((40, 30), (40, 10), (20, 20)):
        record = RequestRecord("tiny", "0", SOURCE_METRICS, SpecCounts(draft, accepted), 0.05, 0.01)
        sidecar.recorder.record(record)
    out = {}
    for family in text_string_to_metric_families(generate_latest(sidecar.registry).decode()):
        if not family.name.startswith("specdecode_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        if not family.samples:  # a counter with no series yet: its labels cannot be seen
            continue
        labels = frozenset(k for s in family.samples for k in s.labels if k not in {"le"})
        out[name] = (family.type, labels)
    return out


def test_every_exported_family_is_documented_with_its_type_and_labels(tmp_path: Path) -> None:
    docs = documented()
    for name, (kind, labels) in exported_by_a_busy_sidecar(tmp_path).items():
        assert name in docs, f"{name} is exported but not in docs/metrics.md"
        assert docs[name] == (kind, labels), f"{name}: doc says {docs[name]}, exporter gives {(kind, labels)}"


def test_every_documented_family_is_exported_when_there_is_data(tmp_path: Path) -> None:
    exported = exported_by_a_busy_sidecar(tmp_path)
    missing = [name for name in documented() if name not in exported]
    assert not missing, f"documented but never exported: {missing}"
