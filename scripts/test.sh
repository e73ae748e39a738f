#!/usr/bin/env bash
# Install what is missing into .venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -k hpke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
bash "$ROOT/scripts/_tools_venv.sh"
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
echo "==> pytest" >&2
exec "$ROOT/.venv/bin/python" -m pytest "$@"
