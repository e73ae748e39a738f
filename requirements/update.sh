#!/usr/bin/env bash
# Regenerate the hash-pinned lock files of the enclave and host roles from
# pyproject.toml (base dependencies + the role's extra), for CPython 3.11 on x86_64
# Linux (what docker/Dockerfile.enclave and the parent instance run).
#
#   requirements/update.sh            # both lock files
#
# Run it with a CPython 3.11 on x86_64 Linux: pip-compile resolves for the Python
# and platform it runs on. It works in a throwaway virtual environment with pinned
# pip and pip-tools, against PyPI only: local pip configuration (find-links, extra
# indexes, constraints) is ignored, so that every hash is the hash of a file PyPI
# serves. Bounded: each resolution gets LOCK_TIMEOUT_S seconds (default 600).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
INDEX_URL="${LOCK_INDEX_URL:-https://pypi.org/simple}"
TIMEOUT_S="${LOCK_TIMEOUT_S:-600}"
PIP_VERSION="25.3"
PIP_TOOLS_VERSION="7.5.2"

if ! "$PY" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux"))'; then
    echo "requirements/update.sh: needs CPython 3.11 on x86_64 Linux (set PYTHON=...); got $("$PY" -c 'import platform, sys; print(sys.version.split()[0], platform.machine(), sys.platform)')" >&2
    exit 2
fi

TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
"$PY" -m venv "$TOOLS/venv"
timeout "$TIMEOUT_S" "$TOOLS/venv/bin/python" -m pip install --quiet \
    --index-url "$INDEX_URL" "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"

cd "$ROOT"
for role in enclave host; do
    echo "==> requirements/$role.lock (base dependencies + [$role])" >&2
    CUSTOM_COMPILE_COMMAND="requirements/update.sh, which runs: pip-compile $PIP_TOOLS_VERSION (pip $PIP_VERSION, CPython 3.11, x86_64 Linux, PIP_CONFIG_FILE=/dev/null) --generate-hashes --allow-unsafe --strip-extras --index-url $INDEX_URL --pip-args=--only-binary=:all: --extra $role pyproject.toml" timeout "$TIMEOUT_S" "$TOOLS/venv/bin/pip-compile" --quiet --rebuild \
        --generate-hashes --allow-unsafe --strip-extras --newline LF \
        --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
        --index-url "$INDEX_URL" --pip-args "--only-binary=:all:" --extra "$role" \
        --output-file "requirements/$role.lock" pyproject.toml
done
