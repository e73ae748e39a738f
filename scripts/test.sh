#!/usr/bin/env bash
# Install what is missing into .venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -k hpke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
echo "==> ruff" >&2
"$ROOT/.venv/bin/ruff" check --quiet ephemeralml common enclave host client tests scripts
echo "==> pytest" >&2
exec "$ROOT/.venv/bin/python" -m pytest "$@"
