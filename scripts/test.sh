#!/usr/bin/env bash
# Install what is missing into .venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -k hpke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
bash "$ROOT/scripts/_tools_venv.sh"
bash "$ROOT/scripts/_web.sh"
bash "$ROOT/scripts/_browser.sh"
echo "==> ruff" >&2
"$ROOT/.venv/bin/ruff" check --quiet ephemeralml tests scripts
echo "==> mypy --strict (source and tests)" >&2
"$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" \
    --cache-dir "$ROOT/.venv/.mypy_cache" ephemeralml tests
echo "==> import contract (.importlinter)" >&2
if ! report="$("$ROOT/.venv/bin/lint-imports" --no-cache .importlinter 2>&1)"; then
    echo "$report" >&2
    exit 1
fi
echo "==> the browser client: node --test (conformance vectors, sessions)" >&2
(cd "$ROOT/web" && npm test --silent >"$ROOT/web/dist/npm-test.log" 2>&1) || {
    cat "$ROOT/web/dist/npm-test.log" >&2
    exit 1
}
grep -E '^# (tests|pass|fail)' "$ROOT/web/dist/npm-test.log" >&2 || true
echo "==> pytest" >&2
exec "$ROOT/.venv/bin/python" -m pytest "$@"
