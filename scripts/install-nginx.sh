#!/usr/bin/env bash
# Unpacks Debian's nginx binary into the cache (no service, no root needed) and prints its path. The tap
# benchmark runs it as a reference reverse proxy, in the foreground, with a config written at run time.
# Idempotent: a second run with the binary in place returns at once.
set -euo pipefail
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
DIR="$CACHE/tools/nginx"
BIN="$DIR/usr/sbin/nginx"
if [ -x "$BIN" ] && "$BIN" -v >/dev/null 2>&1; then echo "$BIN"; exit 0; fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
if ! apt-get download nginx >/dev/null 2>&1; then
  # A fresh machine's package lists may be missing or stale.
  apt-get -qq update >/dev/null 2>&1 || true
  apt-get download nginx >/dev/null 2>&1
fi
rm -rf "$DIR"
mkdir -p "$DIR"
dpkg -x nginx_*.deb "$DIR"
"$BIN" -v >/dev/null 2>&1 || { echo "install-nginx: $BIN does not run (missing shared libraries?)" >&2; exit 1; }
echo "$BIN"
