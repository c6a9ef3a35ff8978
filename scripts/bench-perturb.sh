#!/usr/bin/env bash
# The perturbation family end to end (issue 7, "Measure"): POST /explain/shap against Python
# shap's Partition explainer side by side at the same number of model evaluations, and the
# time and model evaluations of /explain/shap, /explain/occlusion and
# /explain/counterfactual (flip search) at their defaults, for bench_lime.py's three
# sentences. Release server, row cache off. See scripts/bench_perturb_compare.py.
#
# Usage: scripts/bench-perturb.sh [--reps N] [--quick] [-- extra args for the Python driver]
#   --quick   the 10-word sentence, one repetition (~20 s after the build)
# Environment: GLASSBOX_MODEL_DIR (default models/all-MiniLM-L6-v2).
# Output: bench/results/perturb-<date>.jsonl (raw records) and two tables on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${GLASSBOX_MODEL_DIR:-models/all-MiniLM-L6-v2}"
REPS=3
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --quick) REPS=1; EXTRA+=(--text "The food was cold and the service painfully slow tonight."); shift ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) echo "bench-perturb: unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench-server.sh
source scripts/lib/bench-server.sh
start_bench_server bench-perturb "$MODEL_DIR"
OUT="bench/results/perturb-$STAMP.jsonl"

"$BASELINE_PY" scripts/bench_perturb_compare.py "$MODEL_DIR" --url "$URL" --server-pid "$SERVER" \
    --reps "$REPS" --out "$OUT" "${EXTRA[@]}"
echo "bench-perturb: raw records: $OUT" >&2
