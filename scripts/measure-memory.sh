#!/usr/bin/env bash
# Peak memory of one glassbox replica under a mixed load: the figure the container memory
# requests and limits (docker/compose.yaml, docker/k8s/deployment.yaml) are sized from.
#
# Usage: scripts/measure-memory.sh [DURATION_S] [CONCURRENCY]      (defaults: 60 s, 8 clients)
#
# Starts the release binary the way the image does (docker/entrypoint.sh with the Dockerfile's
# ENV, default limits of config/default.toml), loads it with docker/test/load.py using every
# request kind (single and 64-text /predict, 512-token /predict, LIME at 500 and 1000
# samples, word attention, full attention of 2 layers x 12 heads x 252 tokens, a head sweep)
# and reports VmHWM (the peak resident set the kernel recorded) from /proc/PID/status, with
# the resident set after start-up for comparison. Bounded: the load stops after DURATION_S.
#
# Environment: GLASSBOX_BIN (skip the build), MODEL_DIR, MEASURE_MIX (below), extra settings in
# MEASURE_SETTINGS (space-separated KEY=VALUE), OUT (folder for the results; default a
# temporary one, printed).
set -euo pipefail
LOG_PREFIX=measure-memory
# shellcheck source=../docker/test/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../docker/test/lib.sh"

DURATION="${1:-60}"
CONCURRENCY="${2:-8}"
# The request kinds of docker/test/load.py, in turn. MEASURE_MIX=attention_long gives the worst
# case: concurrent attention requests on 512-token texts (75 MB of probabilities per row).
MIX="${MEASURE_MIX:-predict,lime,predict_batch,attention,predict_long,heads_sweep,attention_full,lime_heavy,predict,attention}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/glassbox-memory.XXXXXX")}"
mkdir -p "$OUT"
trap stop_all EXIT

build_binary
ensure_model

port="$(free_port)"
read -r -a extra <<<"${MEASURE_SETTINGS:-}"
start_replica replica "$port" "$OUT/replica.log" "${extra[@]+"${extra[@]}"}"
pid="$REPLICA_PID"
wait_for "$port" /ready 120 "$pid" || { tail -n 20 "$OUT/replica.log" >&2; die "replica did not become ready"; }
idle_kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
log "ready; resident set after warm-up: $((idle_kb / 1024)) MiB"

log "loading it for ${DURATION}s with $CONCURRENCY clients ..."
"$DEPLOY_PY" "$DEPLOY_ROOT/docker/test/load.py" \
    --url "http://127.0.0.1:$port" \
    --mix "$MIX" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --max-requests 20000 \
    --pid "$pid" --summary "$OUT/load-summary.json" --requests "$OUT/requests.jsonl" >/dev/null

"$DEPLOY_PY" - "$OUT/load-summary.json" "$idle_kb" "$(nproc)" "$(uname -m)" <<'PY' | tee "$OUT/memory.txt"
import json, sys
s = json.load(open(sys.argv[1]))
idle_kb, cpus, arch = int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = s["memory"]
mib = lambda kb: kb / 1024
print(f"requests: {s['requests']} in {s['elapsed_s']} s, {s['concurrency']} clients; by status {s['by_status']}")
for kind, k in sorted(s["by_kind"].items()):
    print(f"  {kind:15s} n={k['n']:5d}  p50 {k['p50_ms']:8.1f} ms  max {k['max_ms']:8.1f} ms")
print(f"resident set after warm-up: {mib(idle_kb):.0f} MiB")
print(f"peak resident set (VmHWM):  {mib(m['vm_hwm_kb']):.0f} MiB")
print(f"resident set at the end:    {mib(m['vm_rss_end_kb']):.0f} MiB  (sampled peak {mib(m['peak_sampled_rss_kb']):.0f} MiB, {m['samples']} samples)")
print(f"machine: {cpus} CPUs, {arch}")
PY
stop_pid "$pid" TERM
log "results in $OUT"
