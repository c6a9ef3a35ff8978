#!/usr/bin/env bash
# Integrated gradients end to end, glassbox against Captum, side by side in one run (issue 8),
# and the cost of `evaluate = true` on /explain/gradients and /explain/lime.
#
# Starts the release server (row cache off, so every explanation pays for its own rows), waits
# for /ready, then scripts/bench_ig_compare.py alternates, for each of bench_lime.py's three
# sentences (10, 25 and 60 words), one POST /explain/gradients (integrated gradients, 50
# Gauss-Legendre steps) with one Captum LayerIntegratedGradients explanation
# (bench/python/bench_ig.py's exact call: 50 steps in one internal batch, 2 threads, model
# parameters without gradients), --reps times, and prints a Markdown table (Captum s, glassbox
# s, ratio) with the contention from other processes and the load average during the runs.
#
# Usage: scripts/bench-ig.sh [--reps N] [--quick] [-- extra args for bench_ig_compare.py]
#   --quick     one repetition, no evaluate measurements (~1 minute)
#   extra args  e.g. --param-grads true (Captum's naive setting), --text "...", --steps 20
# Environment: GLASSBOX_MODEL_DIR (default models/all-MiniLM-L6-v2).
# Output: bench/results/ig-<date>.jsonl (raw records) and the tables on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${GLASSBOX_MODEL_DIR:-models/all-MiniLM-L6-v2}"
REPS=3
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --quick) REPS=1; EXTRA+=(--skip-evaluate); shift ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) echo "bench-ig: unknown argument $1" >&2; exit 2 ;;
    esac
done

scripts/fetch-model.sh "$MODEL_DIR" >&2
# setup-baseline.sh prints the venv's python as its last line of stdout.
BASELINE_PY="$(scripts/setup-baseline.sh | tail -n 1)"
[[ -x "$BASELINE_PY" ]] || { echo "bench-ig: baseline python '$BASELINE_PY' not usable" >&2; exit 1; }

cargo build --release >&2
# A private copy: a shared target directory's binary can be replaced by another build mid-run.
BIN="$(mktemp -t glassbox-bench-ig.XXXXXX)"
cp "${CARGO_TARGET_DIR:-target}/release/glassbox" "$BIN"
chmod +x "$BIN"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
mkdir -p bench/results
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="bench/results/ig-$STAMP.jsonl"
LOG="bench/results/ig-$STAMP.server.log"

"$BIN" serve --model "$MODEL_DIR" --host 127.0.0.1 --port "$PORT" \
    --cache-rows 0 --request-timeout-ms 600000 --log-level warn >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$BIN"; [[ -s "$LOG" ]] || rm -f "$LOG"' EXIT

echo "bench-ig: waiting for $URL/ready (server pid $SERVER, log $LOG)" >&2
for _ in $(seq 1 600); do
    if python3 -c "import urllib.request; urllib.request.urlopen('$URL/ready', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { echo "bench-ig: the server exited; see $LOG" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.5
done
python3 -c "import urllib.request; urllib.request.urlopen('$URL/ready', timeout=2)" \
    || { echo "bench-ig: the server never became ready; see $LOG" >&2; exit 1; }

echo "bench-ig: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$BASELINE_PY" scripts/bench_ig_compare.py "$MODEL_DIR" --url "$URL" --server-pid "$SERVER" \
    --reps "$REPS" --out "$OUT" "${EXTRA[@]}"
echo "bench-ig: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "bench-ig: raw records: $OUT" >&2
