#!/usr/bin/env bash
# Build the enclave image (docker/Dockerfile.enclave), turn it into an EIF with
# nitro-cli, and make the client policy that pins its PCRs (docs/deploy.md, step 2).
#
#   scripts/build_eif.sh --owner-keys model-owners.txt [--floors model-floors.txt]
#       [--ca-bundle kms-ca.pem] [--base-port 5000] [--out build/eif]
#       [--tag ephemeralml-enclave:COMMIT]
#       [--signing-certificate cert.pem --private-key key.pem]
#       [--model ID=DIGEST]... [--policy-version N] [--sign-policy signer.pem]
#       [--no-cache]
#
# Writes to --out (default build/eif): enclave.eif, measurements.json (nitro-cli's
# build-enclave answer: PCR0/1/2, and PCR8 when signed), build-info.txt (what a rebuild
# must match), policy.json (ephemeral policy from-measurements) and, with
# --sign-policy, policy.cose. Needs Docker with buildx
# (BuildKit >= 0.13, for rewrite-timestamp) and nitro-cli: run it on the parent
# instance or on any Nitro-enabled build host.
#
# Reproducible: the same commit, owner keys, floors, CA bundle and base port give the
# same PCR0 (check it: build again with --no-cache, which rebuilds every stage, and
# compare the two measurements.json).
# SOURCE_DATE_EPOCH (default: the commit's time) is every file's mtime in the image;
# base images, libnsm's sources and its Cargo.lock, and every Python wheel are pinned.
# Environment: SOURCE_DATE_EPOCH, DOCKER (docker), NITRO_CLI (nitro-cli), EPHEMERAL
# (the `ephemeral` CLI; default .venv/bin/ephemeral, else PATH), BUILD_TIMEOUT_S
# (docker build, default 3600), EIF_TIMEOUT_S (nitro-cli, default 1800).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="build_eif.sh"
DOCKERFILE="docker/Dockerfile.enclave"
NSM_LOCK="docker/nsm-lib/Cargo.lock"

die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "==> $*" >&2; }

usage() {
    sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

OWNER_KEYS_FILE=""
FLOORS_FILE=""
CA_BUNDLE=""
BASE_PORT=5000
OUT="$ROOT/build/eif"
TAG=""
SIGN_CERT=""
SIGN_KEY=""
POLICY_VERSION=""
POLICY_SIGNER=""
MODELS=()
CACHE_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --owner-keys) OWNER_KEYS_FILE="${2:?--owner-keys needs a file}"; shift 2 ;;
        --floors) FLOORS_FILE="${2:?--floors needs a file}"; shift 2 ;;
        --ca-bundle) CA_BUNDLE="${2:?--ca-bundle needs a file}"; shift 2 ;;
        --base-port) BASE_PORT="${2:?--base-port needs a number}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --tag) TAG="${2:?--tag needs a name}"; shift 2 ;;
        --signing-certificate) SIGN_CERT="${2:?--signing-certificate needs a file}"; shift 2 ;;
        --private-key) SIGN_KEY="${2:?--private-key needs a file}"; shift 2 ;;
        --model) MODELS+=("${2:?--model needs ID=DIGEST}"); shift 2 ;;
        --policy-version) POLICY_VERSION="${2:?--policy-version needs a number}"; shift 2 ;;
        --sign-policy) POLICY_SIGNER="${2:?--sign-policy needs a key}"; shift 2 ;;
        --no-cache) CACHE_ARGS=(--no-cache); shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

# -- inputs, checked before anything slow --------------------------------------------
[[ -n "$OWNER_KEYS_FILE" ]] || die "--owner-keys FILE is required (the model owners' Ed25519 public keys, one hex key a line; 'ephemeral model keygen' prints one)"
for f in "$OWNER_KEYS_FILE" ${FLOORS_FILE:+"$FLOORS_FILE"} ${CA_BUNDLE:+"$CA_BUNDLE"} \
         ${SIGN_CERT:+"$SIGN_CERT"} ${SIGN_KEY:+"$SIGN_KEY"} ${POLICY_SIGNER:+"$POLICY_SIGNER"}; do
    [[ -f "$f" && -r "$f" ]] || die "$f is not a readable file"
done
if ! [[ "$BASE_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || (( BASE_PORT > 65526 )); then
    die "--base-port must be 1..65526 (BASE+9 must be a port), got '$BASE_PORT'"
fi
if [[ -n "$SIGN_CERT" && -z "$SIGN_KEY" ]] || [[ -z "$SIGN_CERT" && -n "$SIGN_KEY" ]]; then
    die "--signing-certificate and --private-key go together (the EIF signature sets PCR8)"
fi

DOCKER="${DOCKER:-docker}"
NITRO_CLI="${NITRO_CLI:-nitro-cli}"
if [[ -z "${EPHEMERAL:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/ephemeral" ]]; then EPHEMERAL="$ROOT/.venv/bin/ephemeral"; else EPHEMERAL="ephemeral"; fi
fi
command -v "$DOCKER" >/dev/null 2>&1 \
    || die "docker not found ($DOCKER): install Docker Engine with the buildx plugin (on Amazon Linux 2023: dnf install docker; docs/deploy.md, step 0)"
"$DOCKER" buildx version >/dev/null 2>&1 \
    || die "docker buildx not available: the build needs BuildKit >= 0.13 (docker buildx version)"
command -v "$NITRO_CLI" >/dev/null 2>&1 \
    || die "nitro-cli not found ($NITRO_CLI): build the EIF on a Nitro-enabled instance with aws-nitro-enclaves-cli and aws-nitro-enclaves-cli-devel installed (docs/deploy.md, step 0)"
command -v "$EPHEMERAL" >/dev/null 2>&1 \
    || die "the ephemeral CLI was not found ($EPHEMERAL): run ./scripts/demo.sh once (it makes .venv) or pip install ."

BUILD_TIMEOUT_S="${BUILD_TIMEOUT_S:-3600}"
EIF_TIMEOUT_S="${EIF_TIMEOUT_S:-1800}"

# -- SOURCE_DATE_EPOCH: the commit's time, so that a rebuild of the commit matches ----
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null)" \
        || die "SOURCE_DATE_EPOCH is not set and $ROOT is not a git checkout with a commit"
fi
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, got '$SOURCE_DATE_EPOCH'"
export SOURCE_DATE_EPOCH
MEASURED=(ephemeralml/__init__.py ephemeralml/common ephemeralml/runtime ephemeralml/enclave
          requirements/enclave.lock docker/Dockerfile.enclave docker/enclave_config.py docker/nsm-lib)
COMMIT="unknown"
if git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    COMMIT="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
    if ! git -C "$ROOT" diff --quiet HEAD -- "${MEASURED[@]}" \
        || [[ -n "$(git -C "$ROOT" ls-files --others --exclude-standard -- "${MEASURED[@]}")" ]]; then
        echo "$PROG: WARNING: the enclave's files differ from commit $COMMIT: this EIF's PCR0 will not be what a rebuild of the commit gives" >&2
    fi
fi
TAG="${TAG:-ephemeralml-enclave:$COMMIT}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# -- libnsm's Rust lock (docker/nsm-lib/README.md) -------------------------------------
if [[ ! -f "$ROOT/$NSM_LOCK" ]]; then
    echo "$PROG: WARNING: $NSM_LOCK is missing: resolving libnsm's Rust dependencies now. Commit the file it writes, or the next build may resolve other versions (and give another PCR0)." >&2
    note "docker buildx build --target nsm-lock (writes $NSM_LOCK)"
    timeout "$BUILD_TIMEOUT_S" "$DOCKER" buildx build --file "$ROOT/$DOCKERFILE" --target nsm-lock \
        --platform linux/amd64 --output "type=local,dest=$ROOT/docker/nsm-lib" "$ROOT"
    [[ -f "$ROOT/$NSM_LOCK" ]] || die "docker did not write $NSM_LOCK"
fi

# -- the measured configuration: owner keys and floors as build args, CA bundle as a
#    build context of its own (never the repository's example folder) ----------------
mkdir -p "$WORK/config"
if [[ -n "$CA_BUNDLE" ]]; then cp "$CA_BUNDLE" "$WORK/config/ca-bundle.pem"; fi
OWNER_KEYS="$(cat "$OWNER_KEYS_FILE")"
MODEL_FLOORS=""
if [[ -n "$FLOORS_FILE" ]]; then MODEL_FLOORS="$(cat "$FLOORS_FILE")"; fi

note "docker buildx build $DOCKERFILE -> $TAG (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
timeout "$BUILD_TIMEOUT_S" "$DOCKER" buildx build \
    --file "$ROOT/$DOCKERFILE" --target enclave --platform linux/amd64 \
    --provenance=false --sbom=false "${CACHE_ARGS[@]}" \
    --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" \
    --build-arg "BASE_PORT=$BASE_PORT" \
    --build-arg "OWNER_KEYS=$OWNER_KEYS" \
    --build-arg "MODEL_FLOORS=$MODEL_FLOORS" \
    --build-context "enclave-config=$WORK/config" \
    --output "type=docker,name=$TAG,rewrite-timestamp=true" \
    "$ROOT"

# -- the EIF and its measurements -------------------------------------------------------
EIF="$OUT/enclave.eif"
SIGN_ARGS=()
if [[ -n "$SIGN_CERT" ]]; then SIGN_ARGS=(--signing-certificate "$SIGN_CERT" --private-key "$SIGN_KEY"); fi
note "$NITRO_CLI build-enclave --docker-uri $TAG --output-file $EIF"
rm -f "$EIF" "$OUT/measurements.json"
timeout "$EIF_TIMEOUT_S" "$NITRO_CLI" build-enclave --docker-uri "$TAG" --output-file "$EIF" \
    "${SIGN_ARGS[@]}" >"$WORK/build-enclave.out"
# nitro-cli prints its progress on stderr and the JSON on stdout; keep the JSON object.
sed -n '/^{/,$p' "$WORK/build-enclave.out" >"$OUT/measurements.json"
[[ -s "$OUT/measurements.json" && -f "$EIF" ]] \
    || die "nitro-cli build-enclave wrote no EIF or no measurements (its output: $(head -c 400 "$WORK/build-enclave.out"))"

# What a rebuild must match to give the same PCRs (docs/deploy.md, "Reproducible builds").
{
    echo "commit             $COMMIT"
    echo "source_date_epoch  $SOURCE_DATE_EPOCH"
    echo "base_port          $BASE_PORT"
    echo "image              $TAG $("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || echo unknown)"
    echo "nitro-cli          $("$NITRO_CLI" --version 2>/dev/null | head -n 1 || echo unknown)"
    echo "nsm-lib Cargo.lock $(sha256sum "$ROOT/$NSM_LOCK" | cut -c1-64)"
} >"$OUT/build-info.txt"

# -- the client policy (protocol.md §8) ---------------------------------------------------
POLICY_ARGS=(policy from-measurements "$OUT/measurements.json" -o "$OUT/policy.json" --force)
for m in "${MODELS[@]}"; do POLICY_ARGS+=(--model "$m"); done
if [[ -n "$POLICY_VERSION" ]]; then POLICY_ARGS+=(--version "$POLICY_VERSION"); fi
note "ephemeral ${POLICY_ARGS[*]}"
"$EPHEMERAL" "${POLICY_ARGS[@]}"
if [[ -n "$POLICY_SIGNER" ]]; then
    rm -f "$OUT/policy.cose"
    note "ephemeral policy sign $OUT/policy.json --out $OUT/policy.cose"
    "$EPHEMERAL" policy sign "$OUT/policy.json" --key "$POLICY_SIGNER" --out "$OUT/policy.cose"
fi

# -- what the operator needs next -------------------------------------------------------
EIF_BYTES="$(stat -c %s "$EIF")"
MIB=$((1024 * 1024))
MIN_MIB=$(( (4 * EIF_BYTES + MIB - 1) / MIB ))
echo
echo "EIF          $EIF ($((EIF_BYTES / MIB)) MiB), from image $TAG, base port $BASE_PORT"
echo "measurements $OUT/measurements.json"
echo "policy       $OUT/policy.json${POLICY_SIGNER:+ (signed: $OUT/policy.cose)}"
echo "allocator    memory_mib >= $MIN_MIB (4x the EIF), plus the decrypted models and ONNX Runtime's working memory"
