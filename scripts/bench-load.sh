#!/usr/bin/env bash
# Load benchmark of POST /predict (issue 3's "Measure"): wrk with 1, 8 and 32 concurrent
# connections against the release server, fixed 16-token text, row cache off; then 1 client
# with batching switched off (engine.max_batch_rows = 1) to show that waiting to fill batches
# does not tax the quiet case. Installs wrk from Debian's packages when missing.
#
# Usage: scripts/bench-load.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=10
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        *) echo "bench-load: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v wrk >/dev/null; then
    echo "bench-load: installing wrk (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y wrk >&2; else sudo apt-get install -y wrk >&2; fi
fi
scripts/fetch-model.sh >&2
cargo build --release >&2

PORT="${GLASSBOX_BENCH_PORT:-18080}"
TEXT="The acting was wonderful but the plot felt thin and slow."  # 16 tokens with [CLS]/[SEP]
LUA="$(mktemp)"
trap 'rm -f "$LUA"; [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null || true' EXIT
cat > "$LUA" <<LUAEOF
wrk.method = "POST"
wrk.body = '{"text": "$TEXT"}'
wrk.headers["Content-Type"] = "application/json"
LUAEOF

start_server() {
    GLASSBOX_ENGINE__CACHE_ROWS=0 GLASSBOX_LOG__LEVEL=warn "$@" \
        "${CARGO_TARGET_DIR:-target}/release/glassbox" serve --model models/all-MiniLM-L6-v2 --port "$PORT" >&2 &
    PID=$!
    for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench-load: server did not become ready" >&2
    exit 1
}
stop_server() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

run() { # connections label
    local out
    out="$(wrk -t "$(( $1 < 2 ? 1 : 2 ))" -c "$1" -d "${DURATION}s" --latency -s "$LUA" "http://127.0.0.1:$PORT/predict")"
    local rps p50 p99
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
    p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
    printf '| %s | %s | %s | %s | %s |\n' "$2" "$1" "$rps" "$p50" "$p99"
}

echo "| setting | clients | requests/s | p50 | p99 |"
echo "|---|---:|---:|---:|---:|"
start_server env
for c in 1 8 32; do run "$c" "batching on"; done
stop_server
start_server env GLASSBOX_ENGINE__MAX_BATCH_ROWS=1
run 1 "batching off"
stop_server
echo "(load average after: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
