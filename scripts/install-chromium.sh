#!/usr/bin/env bash
# Installs Debian's chromium (headless screenshots of the sidecar's /status page in tests), then prints its path.
# Idempotent and non-interactive: a second run with chromium installed returns at once. Needs apt, and root or
# passwordless sudo (scripts/apt-install.sh).
set -euo pipefail

find_chromium() { command -v chromium 2>/dev/null || { [ -x /usr/bin/chromium ] && echo /usr/bin/chromium; }; }

if find_chromium >/dev/null; then
  find_chromium
  exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-chromium chromium

CHROMIUM="$(find_chromium)" || { echo "install-chromium: chromium not found after install" >&2; exit 1; }
"$CHROMIUM" --headless --no-sandbox --disable-gpu --version >/dev/null 2>&1 \
  || { echo "install-chromium: $CHROMIUM does not run" >&2; exit 1; }
echo "$CHROMIUM"
