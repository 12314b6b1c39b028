#!/usr/bin/env bash
# Make Debian's headless Chromium available for the browser tests (Playwright drives it; it never
# downloads a browser of its own). Idempotent; needs root (apt) when Chromium is not installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ -x /usr/bin/chromium ]; then
  echo "Chromium is already installed."
  exit 0
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version 2>/dev/null | grep -i chromium
