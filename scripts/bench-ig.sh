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

# shellcheck source=scripts/lib/bench-server.sh
source scripts/lib/bench-server.sh
start_bench_server bench-ig "$MODEL_DIR"
OUT="bench/results/ig-$STAMP.jsonl"

"$BASELINE_PY" scripts/bench_ig_compare.py "$MODEL_DIR" --url "$URL" --server-pid "$SERVER" \
    --reps "$REPS" --out "$OUT" "${EXTRA[@]}"
echo "bench-ig: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "bench-ig: raw records: $OUT" >&2
