#!/usr/bin/env bash
# Builds the real control plane the cluster tests run (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from their Go modules, at the versions tests/cluster/tools/*/go.mod pin.
#
# The binaries go to $SPEC_SIDECAR_CACHE/cluster/<key>/bin, where <key> names the versions and hashes the pinning
# files and the Go toolchain, so a changed pin builds a new set and an unchanged one is reused: a stamp file is
# written last, and a second run only checks it. Builds run under `nice -n 19` (CI and dev machines are shared),
# with a Go build cache of their own, so the figures in build.log are those of a cold build on a fresh machine.
#
# Prints "name=path" lines on stdout (bin=<dir>, then one per binary); logs go to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
MODS="$ROOT/tests/cluster/tools"

K8S_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$MODS/kube/go.mod")"
ETCD_VERSION="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$MODS/etcd/go.mod")"
KWOK_VERSION="$(awk '$1 == "require" && $2 == "sigs.k8s.io/kwok" {print $3}' "$MODS/kwok/go.mod")"
PROMOP_MODULE=github.com/prometheus-operator/prometheus-operator
PROMOP_VERSION="$(awk -v m="$PROMOP_MODULE" '$1 == "require" && $2 == m {print $3}' "$MODS/monitoring/operator/go.mod")"
GO_VERSION="$(go env GOVERSION)"
# Bump RECIPE when the way the binaries are built (flags below) changes: it is part of the key, like the pins.
RECIPE=1
PIN_HASH="$( (echo "$RECIPE" && cat "$MODS"/*/go.mod "$MODS"/*/go.sum "$MODS"/*/*.go) | sha256sum | cut -c1-10)"
KEY="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-$GO_VERSION-$PIN_HASH"
DEST="$CACHE/cluster/$KEY"
BIN="$DEST/bin"
STAMP="$DEST/.complete"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

STAGES="$DEST/kwok-stages.yaml"
# Named by version: the operator's pin is not part of the key (tests/cluster/tools/monitoring/ holds only nested
# modules, which the key's globs do not reach), so a new pin writes new CRDs without rebuilding Kubernetes.
CRDS="$DEST/prometheus-operator-crds-$PROMOP_VERSION"

report() {
  echo "bin=$BIN"
  for name in "${BINARIES[@]}"; do echo "$name=$BIN/$name"; done
  echo "kwok_stages=$STAGES"
  echo "prometheus_operator_crds=$CRDS"
  echo "versions=kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION," \
    "prometheus-operator CRDs $PROMOP_VERSION, $GO_VERSION"
}

# kwok runs no lifecycle of its own: Stage objects say how fake nodes and pods move (node Ready; pod scheduled ->
# Running and Ready; deleted pod -> gone). They are taken from the pinned kwok module itself (the "fast" set its
# kwokctl uses), so they always match the binary; nothing of kwok's is kept in this repository.
write_stages() {
  local dir
  dir="$(cd "$MODS/kwok" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  [ -n "$dir" ] && [ -d "$dir/kustomize/stage" ] || { echo "kwok module source not found" >&2; exit 1; }
  {
    for f in node/fast/node-initialize.yaml pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml \
      pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$dir/kustomize/stage/$f"
    done
  } >"$STAGES.tmp"
  mv "$STAGES.tmp" "$STAGES"
}

# The Prometheus Operator's CRDs as its module ships them (go.sum checks the download).
write_crds() {
  local dir
  dir="$(cd "$MODS/monitoring/operator" && GOFLAGS=-mod=readonly go mod download -json "$PROMOP_MODULE" \
    | awk -F'"' '$2 == "Dir" {print $4}')"
  [ -n "$dir" ] && [ -d "$dir/example/prometheus-operator-crd" ] || { echo "$PROMOP_MODULE CRDs not found" >&2; exit 1; }
  rm -rf "$CRDS.tmp" && mkdir -p "$CRDS.tmp"
  cp "$dir"/example/prometheus-operator-crd/*.yaml "$CRDS.tmp/"
  chmod -R u+w "$CRDS.tmp"  # the module cache is read-only
  rm -rf "$CRDS" && mv "$CRDS.tmp" "$CRDS"
}

# The cluster's certificates and keys are made with openssl at every start (tests/cluster/cluster.py).
command -v openssl >/dev/null 2>&1 || {
  echo "installing openssl (the test cluster's certificates)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600 install --no-install-recommends openssl >&2
}

reuse() {
  if [ -f "$STAMP" ]; then
    echo "cluster binaries: reusing $DEST" >&2
    [ -f "$STAGES" ] || write_stages
    [ -d "$CRDS" ] || write_crds
    report
    exit 0
  fi
}
reuse
# One build per key at a time: `make test` starts this build in the background, and whoever needs the binaries
# meanwhile (the test session, another worktree) waits here for it to finish, then reuses what it built.
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
export GOCACHE="$CACHE/cluster/go-build"
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"

# k8s.io/kubernetes' own build (hack/lib/version.sh) stamps the version into two packages; without it the
# binaries say v0.0.0-master and kubectl/helm see a version skew that is not there. The module proxy gives no
# commit hash, so gitCommit stays unset.
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
KUBE_LDFLAGS="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  KUBE_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  KUBE_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# etcd's and kwok's version numbers are constants in their modules; etcd's GitSHA only says how it was built.
ETCD_LDFLAGS="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"

# build <module dir> <ldflags> <output> <package>: one timed `go build`, its figures appended to build.log.
# GNU time's "maximum resident set size" is that of the largest single process (the compiler or the linker); the
# build runs in a session of its own so that the sum over all its processes (parallel compiles) is sampled too.
build() {
  local dir="$1" ldflags="$2" out="$3" pkg="$4" start sid peak=0 now
  start="$(date +%s)"
  echo "building $out ($pkg)" >&2
  (cd "$MODS/$dir" && exec setsid --wait nice -n 19 /usr/bin/time -v -o "$DEST/time-$out.txt" \
    go build -ldflags "$ldflags" -o "$BIN/$out.tmp" "$pkg" >&2) &
  sid=$!
  while kill -0 "$sid" 2>/dev/null; do
    now="$(ps -o rss= --sid "$sid" 2>/dev/null | awk '{s += $1} END {print s + 0}')"
    [ "$now" -gt "$peak" ] && peak="$now"
    sleep 1
  done
  wait "$sid"
  mv "$BIN/$out.tmp" "$BIN/$out"
  # CPU seconds (user + system) say how long the build takes on an idle machine whatever else ran meanwhile.
  printf '%s seconds=%s cpu_seconds=%s largest_process_rss_kb=%s all_processes_rss_kb=%s\n' "$out" \
    "$(($(date +%s) - start))" \
    "$(awk -F': ' '/(User|System) time/ {s += $2} END {printf "%d", s}' "$DEST/time-$out.txt")" \
    "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DEST/time-$out.txt")" "$peak" | tee -a "$LOG" >&2
}

total_start="$(date +%s)"
build etcd "$ETCD_LDFLAGS" etcd .
build kube "$KUBE_LDFLAGS" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube "$KUBE_LDFLAGS" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube "$KUBE_LDFLAGS" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kube "$KUBE_LDFLAGS" kubectl k8s.io/kubernetes/cmd/kubectl
build kwok "-s -w" kwok sigs.k8s.io/kwok/cmd/kwok
printf 'total seconds=%s go=%s cores=%s\n' "$(($(date +%s) - total_start))" "$GO_VERSION" "$(nproc)" \
  | tee -a "$LOG" >&2

"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | sed -n 1p >&2  # sed reads to the end: head would leave etcd a SIGPIPE (exit 141 under pipefail)
write_stages
write_crds
touch "$STAMP"
report
