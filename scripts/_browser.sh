#!/usr/bin/env bash
# Shared by test.sh: Debian's Chromium for the page's browser tests (tests/browser),
# installed with apt when it is missing and this runs as root. Where it cannot be
# installed, the browser tests are skipped and say why. Quick when it is there.
set -euo pipefail

CHROMIUM="${EPHEMERALML_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "==> no Chromium at $CHROMIUM and no way to install it here: the browser tests will be skipped" >&2
    exit 0
fi
echo "==> installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
