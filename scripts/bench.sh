#!/usr/bin/env bash
# Benchmarks. For now: the Python baseline's forward throughput (bench/python/bench_forward.py)
# on the default model; the Rust side will be added next to it.
# Usage: scripts/bench.sh [extra bench_forward.py args, e.g. --out bench/results/forward.jsonl --wait-idle]
# Environment: GLASSBOX_MODEL_DIR (default models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${GLASSBOX_MODEL_DIR:-models/all-MiniLM-L6-v2}"

scripts/fetch-model.sh "$MODEL_DIR"
# setup-baseline.sh prints the venv's python as its last line of stdout.
BASELINE_PY="$(scripts/setup-baseline.sh | tail -n 1)"
[[ -x "$BASELINE_PY" ]] || { echo "bench: baseline python '$BASELINE_PY' not usable" >&2; exit 1; }

echo "== Python baseline: forward throughput ($MODEL_DIR)"
"$BASELINE_PY" bench/python/bench_forward.py "$MODEL_DIR" \
    --batch-sizes 1 8 32 --seq-lens 16 64 128 "$@"
echo "== Python forward benchmark done (the Rust side of the comparison will be added to this script)"
