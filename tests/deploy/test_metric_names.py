"""Dashboards and alert rules may only query what the sidecar exports (docs/metrics.md, kept true by the
exporter's own test): every specdecode_* name, and every label they select on."""

from __future__ import annotations

import re

import pytest

from tests.deploy.tooling import DASHBOARDS, METRICS_DOC, RULES, exported_families, exported_sample_names

# Labels Prometheus adds to every series from the scrape target (the chart's ServiceMonitor), and `le` of buckets.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "endpoint", "container"}
SELECTOR = re.compile(r"\b(specdecode_[a-z0-9_]+)\{([^}]*)\}")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
DOC_LABELS = re.compile(r"^\| `(specdecode_[a-z0-9_]+)` \| (?:gauge|counter|histogram) \|([^|]*)\|", re.MULTILINE)


def _sources() -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    files[RULES.name] = RULES.read_text()
    return files


def _family(sample: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in exported_families():
            return sample[: -len(suffix)]
    return sample


def _documented_labels() -> dict[str, set[str]]:
    return {
        m.group(1): set(re.findall(r"`([a-z_]+)`", m.group(2))) for m in DOC_LABELS.finditer(METRICS_DOC.read_text())
    }


def test_the_exported_list_is_read_from_docs_metrics_md() -> None:
    names = exported_sample_names()
    # A few anchors from docs/metrics.md's list, so an unreadable table cannot pass silently.
    assert {
        "specdecode_acceptance_ratio",
        "specdecode_target_up",
        "specdecode_request_acceptance_ratio_bucket",
    } <= names


@pytest.mark.parametrize("source", sorted(_sources()))
def test_every_specdecode_name_used_is_exported(source: str) -> None:
    text = _sources()[source]
    used = set(re.findall(r"\bspecdecode_[a-z0-9_]+", text))
    assert used, f"{source} uses no specdecode_ metric at all"
    unknown = sorted(used - exported_sample_names())
    assert not unknown, f"{source} uses metrics docs/metrics.md does not list: {unknown}"


@pytest.mark.parametrize("source", sorted(_sources()))
def test_every_label_selected_on_exists_on_that_metric(source: str) -> None:
    labels = _documented_labels()
    problems = []
    for name, matchers in SELECTOR.findall(_sources()[source].replace('\\"', '"')):
        family = _family(name)
        allowed = labels.get(family, set()) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label in LABEL_MATCHER.findall(matchers):
            if label not in allowed:
                problems.append(f"{name}{{{label}}}")
    assert not problems, f"{source} selects on labels the metric does not carry: {sorted(set(problems))}"
