#!/usr/bin/env bash
# Build the host release: the one archive the parent instance installs from, by
# terraform's bootstrap (infra/terraform, user_data) or by hand (docs/deploy.md §7).
#
#   scripts/build_host_release.sh [--out build/host-release]
#
# host-release.tar.gz holds:
#   host.lock  requirements/host.lock: every dependency of ephemeralml[host], pinned by hash
#   wheels/    those wheels (binary only) and the ephemeralml wheel
#   systemd/   ephemeralml-host.service and ephemeralml-enclave.service (deploy/systemd/)
# and is installed with
#   pip install --no-index --find-links wheels --require-hashes -r host.lock
#   pip install --no-index --no-deps wheels/ephemeralml-*.whl
# The last line printed is `SHA256  PATH`: terraform's host_release_sha256, which the
# instances check before they unpack anything.
#
# Run it on what the lock file was resolved for: x86_64 Linux, CPython 3.11 (Graviton
# instances need a lock and wheels of their own). The archive is byte-for-byte the same
# for the same wheels (sorted members, fixed times and owners, gzip without a name or
# time). Written whole or not at all: a failed step leaves no archive behind.
# Environment: PYTHON (python3.11, else python3), SOURCE_DATE_EPOCH (the archive's
# times; default: the commit's time).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="build_host_release.sh"
OUT="$ROOT/build/host-release"

die() { echo "$PROG: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
[ -n "$PYTHON" ] || die "no python3.11 or python3 on PATH (set PYTHON)"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/release/wheels" "$stage/release/systemd"

echo "$PROG: the wheels of requirements/host.lock (hash-checked)" >&2
"$PYTHON" -m pip download --quiet --require-hashes --no-deps --only-binary=:all: \
    -r "$ROOT/requirements/host.lock" -d "$stage/release/wheels" \
    || die "pip could not download the wheels of requirements/host.lock"
echo "$PROG: the ephemeralml wheel" >&2
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$stage/release/wheels" "$ROOT" \
    || die "pip could not build the ephemeralml wheel"
ls "$stage/release/wheels"/ephemeralml-*.whl >/dev/null 2>&1 \
    || die "pip built no ephemeralml wheel"
cp "$ROOT/requirements/host.lock" "$stage/release/host.lock"
cp "$ROOT/deploy/systemd/ephemeralml-host.service" \
    "$ROOT/deploy/systemd/ephemeralml-enclave.service" "$stage/release/systemd/"

tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --mode='u+rw,go+r,go-w' -C "$stage/release" -cf - host.lock systemd wheels \
    | gzip -n -9 > "$stage/host-release.tar.gz"
mkdir -p "$OUT"
mv "$stage/host-release.tar.gz" "$OUT/host-release.tar.gz.part"
mv "$OUT/host-release.tar.gz.part" "$OUT/host-release.tar.gz"
(cd "$OUT" && sha256sum host-release.tar.gz) | sed "s|host-release.tar.gz|$OUT/host-release.tar.gz|"
