#!/usr/bin/env bash
# Builds the monitoring stack the cluster tests run beside the control plane: the Prometheus Operator
# (cmd/operator), Prometheus 3 (cmd/prometheus) and Alertmanager (cmd/alertmanager), from the Go modules
# tests/cluster/tools/monitoring/{operator,prometheus,alertmanager} pin.
#
# Like scripts/install-cluster.sh, whose layout it follows, but with a cache key of its own, so that a change here
# does not rebuild Kubernetes and the other way round: the binaries go to
# $SPEC_SIDECAR_CACHE/monitoring/<key>/bin, where <key> names the three versions and hashes the pinning files, the
# recipe and the Go toolchain. A stamp file is written last; a second run only checks it. Builds run under
# `nice -n 19` and share the cluster build's Go build cache (the standard library and the libraries the modules
# share are compiled once). The per-binary figures go to <key>/build.log.
#
# Prints "name=path" lines on stdout (bin=<dir>, then one per binary, then versions=); logs go to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
MODS="$ROOT/tests/cluster/tools/monitoring"

pin() { awk -v m="$2" '$1 == "require" && $2 == m {print $3}' "$1"; }
OPERATOR_VERSION="$(pin "$MODS/operator/go.mod" github.com/prometheus-operator/prometheus-operator)"
PROMETHEUS_MODULE_VERSION="$(pin "$MODS/prometheus/go.mod" github.com/prometheus/prometheus)"
ALERTMANAGER_VERSION="$(pin "$MODS/alertmanager/go.mod" github.com/prometheus/alertmanager)"
# Prometheus publishes its Go module as v0.3XY.Z for release 3.XY.Z.
PROMETHEUS_VERSION="$(echo "$PROMETHEUS_MODULE_VERSION" | sed -E 's/^v0\.3([0-9]{2})\.([0-9]+)$/v3.\1.\2/; s/^v3\.0([0-9])/v3.\1/')"
GO_VERSION="$(go env GOVERSION)"
# Bump RECIPE when the way the binaries are built (flags below) changes: it is part of the key, like the pins.
RECIPE=1
PIN_HASH="$( (echo "$RECIPE" && cat "$MODS"/*/go.mod "$MODS"/*/go.sum "$MODS"/*/*.go) | sha256sum | cut -c1-10)"
KEY="operator-$OPERATOR_VERSION-prometheus-$PROMETHEUS_VERSION-alertmanager-$ALERTMANAGER_VERSION-$GO_VERSION-$PIN_HASH"
DEST="$CACHE/monitoring/$KEY"
BIN="$DEST/bin"
STAMP="$DEST/.complete"
BINARIES=(prometheus-operator prometheus alertmanager)

report() {
  echo "bin=$BIN"
  for name in "${BINARIES[@]}"; do echo "$name=$BIN/$name"; done
  echo "versions=prometheus-operator $OPERATOR_VERSION, prometheus $PROMETHEUS_VERSION," \
    "alertmanager $ALERTMANAGER_VERSION, $GO_VERSION"
}

reuse() {
  if [ -f "$STAMP" ]; then
    echo "monitoring binaries: reusing $DEST" >&2
    report
    exit 0
  fi
}
reuse
# One build per key at a time (see scripts/install-cluster.sh): a second caller waits, then reuses.
mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9
reuse

command -v /usr/bin/time >/dev/null 2>&1 || {
  echo "installing GNU time (build figures)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600 install --no-install-recommends time >&2
}

mkdir -p "$BIN"
LOG="$DEST/build.log"
: >"$LOG"
export GOCACHE="${SPEC_SIDECAR_GOCACHE:-$CACHE/cluster/go-build}"
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0

# All three print github.com/prometheus/common/version, which their own Makefiles stamp; without it they report an
# empty version. The module proxy gives no commit hash, so Revision names the module version instead.
version_ldflags() {
  local p=github.com/prometheus/common/version
  echo "-s -w -X $p.Version=${1#v} -X $p.Revision=module-$1 -X $p.Branch=HEAD -X $p.BuildUser=spec-sidecar" \
    "-X $p.BuildDate=19700101-00:00:00"
}

# build <module dir> <ldflags> <output> <package> [go build flags...]: one timed `go build`, its figures appended
# to build.log (the same measurement as scripts/install-cluster.sh: GNU time's peak is the largest single
# process; the sum over the build's processes is sampled each second).
build() {
  local dir="$1" ldflags="$2" out="$3" pkg="$4" start sid peak=0 now
  shift 4
  start="$(date +%s)"
  echo "building $out ($pkg)" >&2
  (cd "$dir" && exec setsid --wait nice -n 19 /usr/bin/time -v -o "$DEST/time-$out.txt" \
    go build "$@" -ldflags "$ldflags" -o "$BIN/$out.tmp" "$pkg" >&2) &
  sid=$!
  while kill -0 "$sid" 2>/dev/null; do
    now="$(ps -o rss= --sid "$sid" 2>/dev/null | awk '{s += $1} END {print s + 0}')"
    [ "$now" -gt "$peak" ] && peak="$now"
    sleep 1
  done
  wait "$sid"
  mv "$BIN/$out.tmp" "$BIN/$out"
  printf '%s seconds=%s cpu_seconds=%s largest_process_rss_kb=%s all_processes_rss_kb=%s\n' "$out" \
    "$(($(date +%s) - start))" \
    "$(awk -F': ' '/(User|System) time/ {s += $2} END {printf "%d", s}' "$DEST/time-$out.txt")" \
    "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DEST/time-$out.txt")" "$peak" | tee -a "$LOG" >&2
}

# Alertmanager's ui package embeds app/dist, the web UI its release process builds with npm; the module as
# published has no app/dist, so a plain build stops at "pattern app/dist: no matching files found". The build
# therefore uses a copy of the downloaded module (go.sum has checked it) with a one-page placeholder UI, through a
# `replace` in a copy of our go.mod. The API, the notification pipeline and the webhook receiver do not use the UI.
alertmanager_src() {
  local work="$DEST/src/alertmanager" dir
  dir="$(cd "$MODS/alertmanager" && go mod download -json github.com/prometheus/alertmanager \
    | awk -F'"' '$2 == "Dir" {print $4}')"
  [ -n "$dir" ] && [ -f "$dir/ui/web.go" ] || { echo "alertmanager module source not found" >&2; exit 1; }
  rm -rf "$work" && mkdir -p "$work"
  cp -r "$dir" "$work/alertmanager"
  chmod -R u+w "$work/alertmanager"  # the module cache is read-only
  mkdir -p "$work/alertmanager/ui/app/dist"
  echo '<!doctype html><title>Alertmanager</title><p>Built without its web UI; the API is at /api/v2.' \
    >"$work/alertmanager/ui/app/dist/index.html"
  cp "$MODS/alertmanager/go.mod" "$MODS/alertmanager/go.sum" "$work/"
  (cd "$work" && go mod edit -replace github.com/prometheus/alertmanager=./alertmanager)
  echo "$work"
}

total_start="$(date +%s)"
build "$MODS/operator" "$(version_ldflags "$OPERATOR_VERSION")" prometheus-operator \
  github.com/prometheus-operator/prometheus-operator/cmd/operator
# remove_all_sd + enable_kubernetes_sd: of Prometheus' service discoveries only Kubernetes' (what the operator's
# config uses) is compiled in; the others bring in every cloud SDK. File and static discovery are always there.
# Without the builtinassets tag the web UI is not embedded; the HTTP API, scraping and rules work without it.
build "$MODS/prometheus" "$(version_ldflags "$PROMETHEUS_VERSION")" prometheus \
  github.com/prometheus/prometheus/cmd/prometheus -tags remove_all_sd,enable_kubernetes_sd
build "$(alertmanager_src)" "$(version_ldflags "$ALERTMANAGER_VERSION")" alertmanager \
  github.com/prometheus/alertmanager/cmd/alertmanager
rm -rf "$DEST/src"
printf 'total seconds=%s go=%s cores=%s\n' "$(($(date +%s) - total_start))" "$GO_VERSION" "$(nproc)" \
  | tee -a "$LOG" >&2

for name in "${BINARIES[@]}"; do "$BIN/$name" --version 2>&1 | sed -n 1p >&2; done  # not head: SIGPIPE, see install-cluster.sh
touch "$STAMP"
report
