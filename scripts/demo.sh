#!/usr/bin/env bash
# End to end in mock mode: install what is missing, start the enclave and the host,
# embed two texts through the blind relay, verify the receipt offline, stop both.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
BIN="$ROOT/.venv/bin"

OUT="$ROOT/demo-out"
rm -rf "$OUT/receipts"
mkdir -p "$OUT"
export EPHEMERALML_HOME="$OUT/home"
# One base port moves every port of every program (the host's relay on BASE, the
# enclave on BASE+5, the host's services on BASE+6 and +7, the local KMS on BASE+9):
#   EPHEMERALML_BASE_PORT=6000 ./scripts/demo.sh
export EPHEMERALML_BASE_PORT="${EPHEMERALML_BASE_PORT:-5000}"
unset EPHEMERAL_HOST EPHEMERAL_HOST_LISTEN EPHEMERAL_ENCLAVE
HOST_ADDR="127.0.0.1:$EPHEMERALML_BASE_PORT"
ENCLAVE_ADDR="127.0.0.1:$((EPHEMERALML_BASE_PORT + 5))"

DEMO="demo"
# shellcheck source-path=SCRIPTDIR source=_programs.sh
source "$ROOT/scripts/_programs.sh"

echo "==> starting the host in mock mode: blind relay on $HOST_ADDR, model store, KMS egress proxy,"
echo "    and a local KMS server; it packages the model under a KMS key whose policy names the enclave's PCRs"
"$BIN/ephemeral-host" --mock >"$OUT/host.log" 2>&1 &
pids+=($!)
wait_for "$OUT/host.log" "relaying" "ephemeral-host" "${pids[-1]}"
sed 's/^/    /' "$OUT/host.log"

echo "==> starting the enclave (mock mode) on $ENCLAVE_ADDR: attested key release, model decrypted in memory"
"$BIN/ephemeral-enclave" --mock >"$OUT/enclave.log" 2>&1 &
pids+=($!)
wait_for "$OUT/enclave.log" "serving" "ephemeral-enclave" "${pids[-1]}"
sed 's/^/    /' "$OUT/enclave.log"

echo
echo "==> ephemeral attest --mock   (verify the enclave before sending anything)"
"$BIN/ephemeral" attest --mock

echo
echo "==> ephemeral embed --mock    (HPKE-sealed request, receipt verified on arrival)"
"$BIN/ephemeral" embed --mock --receipt-out "$OUT/receipts" --save-payloads \
    "Confidential inference runs as if the host were already hacked." \
    "The host relay only ever sees ciphertext."

receipts=("$OUT"/receipts/*.receipt.cbor)  # sorted, as ls sorts them
receipt="${receipts[0]}"
rid="$(basename "$receipt" .receipt.cbor)"
echo
echo "==> ephemeral verify --mock   (offline: receipt + attestation document + payload hashes)"
"$BIN/ephemeral" verify "$receipt" --mock \
    --request "$OUT/receipts/$rid.request.cbor" --response "$OUT/receipts/$rid.response.cbor"

echo
echo "==> no plaintext model outside the packages it came from:"
echo "    $(find "$OUT/home/store" -type f | sed "s|$OUT/||" | tr '\n' ' ')"
echo
echo "==> done. Receipts and attestation documents: $OUT/receipts"
echo "    Logs: $OUT/enclave.log, $OUT/host.log (the host logs connections and byte counts, never payloads)"
