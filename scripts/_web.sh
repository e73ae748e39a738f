#!/usr/bin/env bash
# Shared by test.sh and demo.sh: install the browser client's npm dependencies and
# bundle it, and the page `ephemeral web` serves, into web/dist/. Idempotent; a
# second run checks two stamps and returns.
#
#   npm ci   runs only when web/package.json, web/package-lock.json or this script
#            changed (exact versions from the lock file, install scripts off);
#   esbuild  runs only when the sources (web/src, the page in web/page), the lock
#            file or web/build.mjs changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/web"
INSTALLED="$WEB/node_modules/.ephemeralml-installed"
BUILT="$WEB/dist/.ephemeralml-built"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is not installed; the browser client needs node >= 20 and npm" >&2
        exit 1
    fi
done
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "error: node $(node --version) is too old; the browser client needs node >= 20" >&2
    exit 1
fi

digest() {
    sha256sum "$@" | sha256sum | cut -c1-64
}

want_install="$(digest "$WEB/package.json" "$WEB/package-lock.json" "$ROOT/scripts/_web.sh")"
if [[ ! -f "$INSTALLED" || "$(cat "$INSTALLED")" != "$want_install" ]]; then
    echo "==> installing the browser client's npm dependencies (npm ci)" >&2
    (cd "$WEB" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$want_install" > "$INSTALLED"
fi

mapfile -d '' sources < <(find "$WEB/src" "$WEB/page" -type f -print0 | sort -z)
want_build="$(digest "${sources[@]}" "$WEB/package-lock.json" "$WEB/build.mjs")"
if [[ ! -f "$BUILT" || ! -f "$WEB/dist/app.js" || "$(cat "$BUILT")" != "$want_build" ]]; then
    echo "==> bundling the browser client (esbuild) into web/dist/" >&2
    (cd "$WEB" && node build.mjs)
    echo "$want_build" > "$BUILT"
fi
