#!/usr/bin/env bash
# Tools that cannot share .venv with the project (checkov pins packaging<24, which
# pytest 9 refuses): their own venv, .venv-tools, from pinned versions. Idempotent; a
# second run checks one stamp and returns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-tools"
PY="${PYTHON:-python3}"
STAMP="$VENV/.installed"
TOOLS=(checkov==3.3.30)

want="$(printf '%s\n' "${TOOLS[@]}" | cat - "$ROOT/scripts/_tools_venv.sh" | sha256sum | cut -c1-64)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    echo "==> installing ${TOOLS[*]} into .venv-tools" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
    echo "$want" > "$STAMP"
fi
