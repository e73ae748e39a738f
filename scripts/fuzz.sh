#!/usr/bin/env bash
# Coverage-guided fuzzing of one target (atheris/libFuzzer); see tests/fuzz/targets.py.
#
#   scripts/fuzz.sh                       list the targets
#   scripts/fuzz.sh TARGET SECONDS        fuzz TARGET for SECONDS; exit 1 on a finding
#   scripts/fuzz.sh --merge TARGET        minimise the committed corpus with what runs found
#
# A finding is an exception that is not an ephemeralml Error, a broken invariant, a
# crash, an input over FUZZ_TIMEOUT_S seconds or FUZZ_RSS_MB of memory. The committed
# seeds (tests/fuzz/corpus/TARGET) are only read; new inputs go to
# $FUZZ_OUT/TARGET/corpus and findings to $FUZZ_OUT/TARGET/findings (FUZZ_OUT defaults
# to .fuzz-out/, ignored by git).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/_venv.sh"  # installs what is missing; one stamp check otherwise
PY="$ROOT/.venv/bin/python"
OUT="${FUZZ_OUT:-$ROOT/.fuzz-out}"
#: Per-input limits: far above what any valid input costs (milliseconds, ~100 MB).
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"
RSS_MB="${FUZZ_RSS_MB:-1536}"
TARGETS="$("$PY" -c 'from tests.fuzz.targets import TARGETS; print(" ".join(TARGETS))')"

if [[ $# -eq 0 ]]; then
    echo "usage: scripts/fuzz.sh TARGET SECONDS | --merge TARGET" >&2
    echo "targets: $TARGETS"
    exit 0
fi

known() { [[ " $TARGETS " == *" $1 "* ]] || { echo "unknown target $1; targets: $TARGETS" >&2; exit 2; }; }

if [[ "$1" == "--merge" ]]; then
    T="${2:?target}"; known "$T"
    SEEDS="$ROOT/tests/fuzz/corpus/$T"
    NEW="$(mktemp -d)"
    trap 'rm -rf "$NEW" "$NEW.run" "$NEW.log" "$NEW.work"' EXIT
    # Keep the hand-made seeds, then add only inputs that add coverage.
    cp "$SEEDS"/seed-* "$NEW"/
    # -merge=1 does its work in a child started as argv[0] with the same flags.
    printf '#!/bin/sh\ncd "%s" && exec "%s" -m tests.fuzz.run "%s" "$@"\n' "$ROOT" "$PY" "$T" >"$NEW.run"
    chmod +x "$NEW.run"
    # Real vectors (tests/vectors/real) and inputs derived from them stay out of the corpus.
    "$PY" -m tests.fuzz.corpus_filter "$OUT/$T/corpus" "$NEW.work"
    EPHEMERALML_FUZZ_ARGV0="$NEW.run" "$PY" -m tests.fuzz.run "$T" -merge=1 \
        -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT_S" "$NEW" "$SEEDS" "$NEW.work" \
        >"$NEW.log" 2>&1 || { tail -20 "$NEW.log" >&2; exit 1; }
    grep -E '^MERGE-OUTER: [0-9]+ new files' "$NEW.log" || true
    rm -f "$NEW.log"
    rm -f "$SEEDS"/*
    cp "$NEW"/* "$SEEDS"/
    # shellcheck disable=SC2012  # libFuzzer names files by hex digest (seeds: seed-*): ls is only counted or shown
    echo "$T: $(ls "$SEEDS" | wc -l) files, $(du -sb "$SEEDS" | cut -f1) bytes in $SEEDS"
    exit 0
fi

T="$1"; SECONDS_="${2:?seconds}"; known "$T"
WORK="$OUT/$T/corpus"
FINDINGS="$OUT/$T/findings"
mkdir -p "$WORK" "$FINDINGS"
"$PY" -c "from pathlib import Path; from tests.fuzz.targets import seed_work_corpus; seed_work_corpus('$T', Path('$WORK'))"
LOG="$OUT/$T/log.txt"
SEEDS=()
[[ -d "$ROOT/tests/fuzz/corpus/$T" ]] && SEEDS=("$ROOT/tests/fuzz/corpus/$T")
set +e
"$PY" -m tests.fuzz.run "$T" \
    -max_total_time="$SECONDS_" -timeout="$TIMEOUT_S" -rss_limit_mb="$RSS_MB" \
    -max_len=20000 -print_final_stats=1 -artifact_prefix="$FINDINGS/" \
    "$WORK" "${SEEDS[@]}" >"$LOG" 2>&1
RC=$?
set -e
grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$LOG" | sed "s/^/$T: /" || true
# shellcheck disable=SC2012  # libFuzzer names files by hex digest (seeds: seed-*): ls is only counted or shown
echo "$T: corpus $(ls "$WORK" | wc -l) files (work) + $(ls "${SEEDS[@]:-/nonexistent}" 2>/dev/null | wc -l) committed"
FOUND="$(ls -A "$FINDINGS")"
if [[ $RC -ne 0 || -n "$FOUND" ]]; then
    tail -40 "$LOG" >&2
    echo "$T: FINDING (libFuzzer exit $RC); inputs in $FINDINGS:" >&2
    # shellcheck disable=SC2012  # libFuzzer names files by hex digest (seeds: seed-*): ls is only counted or shown
    ls -1 "$FINDINGS" | sed "s|^|  $FINDINGS/|" >&2
    exit 1
fi
echo "$T: no finding in ${SECONDS_}s"
