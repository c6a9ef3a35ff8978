#!/usr/bin/env bash
# LIME end to end, glassbox against Python lime, side by side in one run (issue 5, "Measure").
#
# Starts the release server (row cache off, so every explanation pays for its own rows), waits
# for /ready, then scripts/bench_lime_compare.py alternates, for each sentence and sample
# count, one POST /explain/lime with one Python lime explanation (bench/python/bench_lime.py's
# exact call: same classifier, 2 threads, batch 64), repeating --reps times. It prints a
# Markdown table: seconds per explanation, rows/s, speedup, glassbox's distinct rows and how
# close it gets to the FLOP bound, and the contention from other processes during the runs.
#
# Usage: scripts/bench-lime.sh [--reps N] [--num-samples "1000 5000"] [--quick] [-- extra args]
#   --quick            the 10- and 25-word sentences at 1000 samples, one repetition (~30 s)
#   extra args         passed to bench_lime_compare.py (e.g. --text "..." --max-other 0.2)
# Environment: GLASSBOX_MODEL_DIR (default models/all-MiniLM-L6-v2), PEAK_GFLOPS (default 316,
# this machine's fp32 matmul peak per the issue).
# Output: bench/results/lime-<date>.jsonl (raw records) and the table on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${GLASSBOX_MODEL_DIR:-models/all-MiniLM-L6-v2}"
PEAK="${PEAK_GFLOPS:-316}"
REPS=2
SAMPLES="1000 5000"
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --num-samples) SAMPLES="$2"; shift 2 ;;
        --quick)
            REPS=1; SAMPLES="1000"
            EXTRA+=(--text
                "The food was cold and the service painfully slow tonight."
                "I expected a lot from this phone after all the hype, but the battery barely lasts a day and the camera struggles in low light.")
            shift ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) echo "bench-lime: unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench-server.sh
source scripts/lib/bench-server.sh
start_bench_server bench-lime "$MODEL_DIR"
OUT="bench/results/lime-$STAMP.jsonl"

# shellcheck disable=SC2086
"$BASELINE_PY" scripts/bench_lime_compare.py "$MODEL_DIR" --url "$URL" --server-pid "$SERVER" \
    --num-samples $SAMPLES --reps "$REPS" --peak-gflops "$PEAK" --out "$OUT" "${EXTRA[@]}"
echo "bench-lime: raw records: $OUT" >&2
