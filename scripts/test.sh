#!/usr/bin/env bash
# Install what is missing into .venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -k hpke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
echo "==> ruff" >&2
"$ROOT/.venv/bin/ruff" check --quiet ephemeralml tests scripts
echo "==> mypy --strict (source and tests)" >&2
"$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" \
    --cache-dir "$ROOT/.venv/.mypy_cache" ephemeralml tests
echo "==> pytest" >&2
exec "$ROOT/.venv/bin/python" -m pytest "$@"
