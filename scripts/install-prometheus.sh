#!/usr/bin/env bash
# Installs Debian's prometheus (server + promtool) and prometheus-alertmanager, then prints promtool's path.
# Idempotent and quiet: a second run with both installed returns at once. Needs root (or sudo) and apt.
# No service is left running: package scripts are told not to start services, and the check at the end
# fails loudly if one did.
set -euo pipefail

find_promtool() { command -v promtool 2>/dev/null || { [ -x /usr/bin/promtool ] && echo /usr/bin/promtool; }; }

if find_promtool >/dev/null && command -v prometheus-alertmanager >/dev/null 2>&1; then
  find_promtool
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-prometheus: need root or sudo to apt-get install" >&2; exit 1; }
  SUDO="sudo -n"
fi

# invoke-rc.d asks policy-rc.d whether it may start a service; 101 means no. Only add one if absent, and only
# for the duration of this install.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=""
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  ADDED_POLICY=1
fi
cleanup() { if [ -n "$ADDED_POLICY" ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
APT=($SUDO apt-get -qq -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
PACKAGES=(prometheus prometheus-alertmanager)
if ! "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
  # A fresh machine's package lists may be missing or stale.
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

PROMTOOL="$(find_promtool)" || { echo "install-prometheus: promtool not found after install" >&2; exit 1; }
"$PROMTOOL" --version >/dev/null 2>&1 || { echo "install-prometheus: $PROMTOOL does not run" >&2; exit 1; }
# Where a service manager did start them anyway, stop them: tests start their own servers on free ports.
for svc in prometheus prometheus-alertmanager; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
done
echo "$PROMTOOL"
