#!/usr/bin/env bash
# Installs Debian's chromium (headless screenshots of the sidecar's /status page in tests), then prints its path.
# Idempotent and non-interactive: a second run with chromium installed returns at once. Needs root (or sudo) and apt.
set -euo pipefail

find_chromium() { command -v chromium 2>/dev/null || { [ -x /usr/bin/chromium ] && echo /usr/bin/chromium; }; }

if find_chromium >/dev/null; then
  find_chromium
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-chromium: need root or sudo to apt-get install" >&2; exit 1; }
  SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive
APT=($SUDO apt-get -qq -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! "${APT[@]}" install --no-install-recommends chromium >/dev/null 2>&1; then
  # A fresh machine's package lists may be missing or stale.
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends chromium >/dev/null
fi

CHROMIUM="$(find_chromium)" || { echo "install-chromium: chromium not found after install" >&2; exit 1; }
"$CHROMIUM" --headless --no-sandbox --disable-gpu --version >/dev/null 2>&1 \
  || { echo "install-chromium: $CHROMIUM does not run" >&2; exit 1; }
echo "$CHROMIUM"
