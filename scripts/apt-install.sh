#!/usr/bin/env bash
# apt-get install for the other install scripts, the same way everywhere:
#   bash scripts/apt-install.sh WHO [--no-services] PACKAGE...
# WHO names the calling script in error messages. As root it runs apt-get; otherwise through `sudo -n` (it never
# waits for a password that nobody will type under make), and without root or passwordless sudo it says what to
# do and exits 1 before touching anything. --no-services: package scripts may not start services meanwhile (the
# tests start their own servers on free ports). Quiet: apt's output shows only when the retry fails too.
set -euo pipefail

WHO="${1:?usage: apt-install.sh WHO [--no-services] PACKAGE...}"
shift
NO_SERVICES=""
if [ "${1:-}" = --no-services ]; then
  NO_SERVICES=1
  shift
fi
[ "$#" -gt 0 ] || { echo "apt-install: $WHO gave no package" >&2; exit 2; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
    echo "$WHO: installing $* needs root or passwordless sudo;" \
      "run as root, or install them yourself (apt-get install $*)" >&2
    exit 1
  fi
  SUDO=(sudo -n)
fi

if [ -n "$NO_SERVICES" ]; then
  # invoke-rc.d asks policy-rc.d whether it may start a service; 101 means no. Only add one if absent, and only
  # for the duration of this install.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
  fi
fi

# env, not export: sudo drops the caller's environment, and debconf would then ask its questions.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! "${APT[@]}" install --no-install-recommends "$@" >/dev/null 2>&1; then
  # A fresh machine's package lists may be missing or stale.
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends "$@" >/dev/null
fi
