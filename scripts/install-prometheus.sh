#!/usr/bin/env bash
# Installs Debian's prometheus (server + promtool) and prometheus-alertmanager, then prints promtool's path.
# Idempotent and quiet: a second run with both installed returns at once. Needs apt, and root or passwordless
# sudo (scripts/apt-install.sh).
# No service is left running: package scripts are told not to start services, and the check at the end
# fails loudly if one did.
set -euo pipefail

find_promtool() { command -v promtool 2>/dev/null || { [ -x /usr/bin/promtool ] && echo /usr/bin/promtool; }; }

if find_promtool >/dev/null && command -v prometheus-alertmanager >/dev/null 2>&1; then
  find_promtool
  exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo -n); fi  # apt-install.sh has already checked it works
bash "$(dirname "$0")/apt-install.sh" install-prometheus --no-services prometheus prometheus-alertmanager

PROMTOOL="$(find_promtool)" || { echo "install-prometheus: promtool not found after install" >&2; exit 1; }
"$PROMTOOL" --version >/dev/null 2>&1 || { echo "install-prometheus: $PROMTOOL does not run" >&2; exit 1; }
# Where a service manager did start them anyway, stop them: tests start their own servers on free ports.
for svc in prometheus prometheus-alertmanager; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    "${SUDO[@]}" systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
done
echo "$PROMTOOL"
