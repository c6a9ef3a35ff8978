#!/usr/bin/env bash
# Forward throughput, glassbox against the Python baseline (PyTorch), side by side in one run:
# for each repetition the Rust benchmark and bench/python/bench_forward.py run back to back on
# the same grid (batch 1/8/32 x length 16/64/128, 2 threads), then one table with the ratios.
# glassbox runs at the service's default model.matmul_precision, high; on a CPU with AMX it also
# runs at highest (f32 products) and medium (bf16) for comparison.
# The Rust side is the release build that `make run` ships (cargo bench uses the release profile).
#
# Usage: scripts/bench.sh [--reps N] [--min-time S]
# Environment: GLASSBOX_MODEL_DIR (default models/all-MiniLM-L6-v2).
# Output: bench/results/forward-<date>.jsonl (raw records) and the table on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${GLASSBOX_MODEL_DIR:-models/all-MiniLM-L6-v2}"
REPS=1
MIN_TIME=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --min-time) MIN_TIME="$2"; shift 2 ;;
        *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

scripts/fetch-model.sh "$MODEL_DIR" >&2
# setup-baseline.sh prints the venv's python as its last line of stdout.
BASELINE_PY="$(scripts/setup-baseline.sh | tail -n 1)"
[[ -x "$BASELINE_PY" ]] || { echo "bench: baseline python '$BASELINE_PY' not usable" >&2; exit 1; }

cargo bench --bench forward --no-run >&2
mkdir -p bench/results
OUT="bench/results/forward-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
GRID=(--batch-sizes 1 8 32 --seq-lens 16 64 128 --min-time "$MIN_TIME")

# One matmul peak for both sides, measured with torch.mm (the baseline's own definition).
PEAK="$("$BASELINE_PY" -c 'import sys; sys.path.insert(0, "bench/python"); import benchutil as bu; bu.setup_threads(2); print(bu.torch_mm_gflops(2048, 7)["best_gflops"])')"
echo "{\"record\": \"peak\", \"source\": \"torch.mm 2048 fp32 best of 7\", \"gflops\": $PEAK}" >> "$OUT"

for rep in $(seq 1 "$REPS"); do
    echo "== repetition $rep/$REPS: glassbox (Rust, release)" >&2
    cargo bench --bench forward -- --model "$MODEL_DIR" --peak-gflops "$PEAK" "${GRID[@]}" | tee -a "$OUT" >&2
    if grep -qw amx_bf16 /proc/cpuinfo; then
        for precision in highest medium; do
            echo "== repetition $rep/$REPS: glassbox, matmul_precision $precision" >&2
            cargo bench --bench forward -- --model "$MODEL_DIR" --peak-gflops "$PEAK" \
                --matmul-precision "$precision" "${GRID[@]}" | tee -a "$OUT" >&2
        done
    fi
    echo "== repetition $rep/$REPS: PyTorch baseline" >&2
    "$BASELINE_PY" bench/python/bench_forward.py "$MODEL_DIR" --threads 2 --peak-gflops "$PEAK" "${GRID[@]}" \
        | sed 's/"record": "forward"/"record": "forward", "implementation": "pytorch"/' | tee -a "$OUT" >&2
done

python3 scripts/bench_table.py "$OUT"
echo "raw records: $OUT" >&2
