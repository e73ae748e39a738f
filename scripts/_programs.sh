# shellcheck shell=bash
# Sourced by demo.sh and chat_demo.sh: programs started in the background, waited for
# by their log line, and all stopped when the script exits (however it exits).
# Set DEMO to the script's name for its messages before sourcing.
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_for() {  # wait_for LOGFILE PATTERN WHAT PID
    for _ in $(seq 1 600); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        if ! kill -0 "$4" 2>/dev/null; then
            echo "${DEMO:-demo}: $3 exited early:" >&2; cat "$1" >&2; exit 1
        fi
        sleep 0.1
    done
    echo "${DEMO:-demo}: $3 did not start within 60 s:" >&2; cat "$1" >&2; exit 1
}
