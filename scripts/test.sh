#!/usr/bin/env bash
# Install what is missing into .venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -k hpke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
echo "==> ruff" >&2
"$ROOT/.venv/bin/ruff" check --quiet ephemeralml common enclave host client tests scripts
echo "==> mypy --strict (source)" >&2
# The four folders are mapped to ephemeralml.* at install time; mypy does not follow
# the editable install's import hook, so it checks a tree of links with that layout.
TREE="$ROOT/.venv/mypy-tree"
rm -rf "$TREE" && mkdir -p "$TREE/ephemeralml"
for f in "$ROOT"/ephemeralml/*; do ln -s "$f" "$TREE/ephemeralml/"; done
for d in common enclave host client; do ln -s "$ROOT/$d" "$TREE/ephemeralml/$d"; done
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" \
    --cache-dir "$ROOT/.venv/.mypy_cache" -p ephemeralml)
echo "==> pytest" >&2
exec "$ROOT/.venv/bin/python" -m pytest "$@"
