#!/usr/bin/env bash
# Load and soak test (`make stress`): the release server over the default model with a small
# queue, driven over loopback at twice its serial capacity by a mixed workload (predict, batch
# predict, word attention, LIME at 100 samples, occlusion) for STRESS_SECONDS (default 90).
# Every answer must equal the same request's answer on the idle server (probabilities and
# every number within 1e-5; same seed, same explanation) or be a documented 429/503/504; none
# may hang; the resident set must stay under 1 GiB and not grow in the second half. See
# scripts/stress.py for the checks. Prints a summary and writes it to
# bench/results/stress-<UTC timestamp>.json (and the server's log beside it).
#
# Environment: STRESS_SECONDS, STRESS_OVERLOAD (default 2), STRESS_QUEUE_ROWS (the server's
# engine.max_queued_rows, default 256), STRESS_TIMEOUT_MS (server.request_timeout_ms, default
# 10000), MODEL_DIR, GLASSBOX_BIN (skip the build), PYTHON. Python: the standard library only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SECONDS_LOAD="${STRESS_SECONDS:-90}"
OVERLOAD="${STRESS_OVERLOAD:-2}"
QUEUE_ROWS="${STRESS_QUEUE_ROWS:-256}"
TIMEOUT_MS="${STRESS_TIMEOUT_MS:-10000}"
MODEL_DIR="${MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
case "$MODEL_DIR" in /*) ;; *) MODEL_DIR="$ROOT/$MODEL_DIR" ;; esac
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/bench/results/stress-$STAMP.json"
SERVER_LOG="$ROOT/bench/results/stress-$STAMP.server.log"

log() { printf 'stress: %s\n' "$*" >&2; }
die() { printf 'stress: ERROR: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found"
"$ROOT/scripts/fetch-model.sh" "$MODEL_DIR" >&2 || die "cannot fetch the model into $MODEL_DIR"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/glassbox-stress.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${GLASSBOX_BIN:-}" ]]; then
    log "building the release binary"
    (cd "$ROOT" && "${CARGO:-cargo}" build --release --quiet --bin glassbox) || die "cargo build --release failed"
    # A private copy: another build may replace target/release/glassbox during the run.
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/glassbox" "$WORK/glassbox"
    GLASSBOX_BIN="$WORK/glassbox"
fi

mkdir -p "$ROOT/bench/results"
# A small queue needs a sample limit that fits in it (the configuration is validated).
GLASSBOX_LIMITS__MAX_NUM_SAMPLES="$QUEUE_ROWS" "$GLASSBOX_BIN" serve --model "$MODEL_DIR" --host 127.0.0.1 --port 0 \
    --max-queued-rows "$QUEUE_ROWS" --request-timeout-ms "$TIMEOUT_MS" --cache-rows 0 \
    --log-format json --log-level info 2>"$SERVER_LOG" &
SERVER_PID=$!

PORT=""
for _ in $(seq 1 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$SERVER_LOG" >&2; die "the server exited during start-up"; }
    PORT="$(grep -o '"address":"127\.0\.0\.1:[0-9]*"' "$SERVER_LOG" | head -1 | grep -o '[0-9]*"$' | tr -d '"' || true)"
    if [[ -n "$PORT" ]] && "$PY" - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2)
PYEOF
    PORT=""
    sleep 0.2
done
[[ -n "$PORT" ]] || { tail -n 20 "$SERVER_LOG" >&2; die "the server did not become ready"; }
log "server pid $SERVER_PID ready on 127.0.0.1:$PORT (queue $QUEUE_ROWS rows, deadline $TIMEOUT_MS ms, cache off); load average $(cut -d' ' -f1-3 /proc/loadavg)"

settings="{\"model\": \"$(basename "$MODEL_DIR")\", \"max_queued_rows\": $QUEUE_ROWS, \"request_timeout_ms\": $TIMEOUT_MS, \"cache_rows\": 0, \"max_num_samples\": $QUEUE_ROWS, \"workers\": 1}"
status=0
"$PY" "$ROOT/scripts/stress.py" --port "$PORT" --pid "$SERVER_PID" --duration "$SECONDS_LOAD" \
    --overload "$OVERLOAD" --request-timeout-ms "$TIMEOUT_MS" --server-settings "$settings" \
    --out "$OUT" || status=$?
if grep -q '"level":"ERROR"' "$SERVER_LOG"; then
    log "the server logged errors:"
    grep '"level":"ERROR"' "$SERVER_LOG" | head -n 10 >&2
    status=1
fi
# Keep the server log only when something failed (it is one line per request).
if [[ $status -eq 0 ]]; then rm -f "$SERVER_LOG"; else log "server log kept: $SERVER_LOG"; fi
exit "$status"
