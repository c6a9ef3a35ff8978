#!/usr/bin/env bash
# Property-based API testing: Schemathesis generates requests from the service's own OpenAPI
# document (GET /openapi.json, the same document as openapi/openapi.json) and checks every
# answer against it, on a live server over loopback.
#
#   scripts/schemathesis.sh [extra schemathesis run arguments]
#
# Checks: not_a_server_error (no 500, ever), response_schema_conformance (every body matches
# its documented schema), status_code_conformance (every status is documented for its route)
# and content_type_conformance. Bounded: GLASSBOX_ST_MAX_EXAMPLES examples per operation and
# phase (default 30), fixed seed (GLASSBOX_ST_SEED). GLASSBOX_ST_MAX_TIME=S instead keeps
# fuzzing until S seconds are spent (a longer hunt; Schemathesis repeats fuzzing until then).
#
# The server serves the tiny test checkpoint (tests/fixtures/tiny/tiny-bert-cls: 2 layers,
# real BERT vocabulary), so the run measures the HTTP contract, not model speed; set
# GLASSBOX_ST_MODEL to serve another model folder. It is the release binary (built here with
# `cargo build --release`; CARGO_TARGET_DIR is honoured), or with GLASSBOX_ST_PROFILE=debug the
# debug binary that `cargo test` already built (what `make test` uses: no release build), or
# GLASSBOX_BIN; it is stopped on exit, whatever happens. Schemathesis is installed from PyPI
# into a cached venv, ${GLASSBOX_ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/glassbox-schemathesis-venv};
# idempotent: nothing is installed when it is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GLASSBOX_ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/glassbox-schemathesis-venv}"
VERSION="${GLASSBOX_ST_VERSION:-4.32.5}"
MODEL="${GLASSBOX_ST_MODEL:-$ROOT/tests/fixtures/tiny/tiny-bert-cls}"
MAX_EXAMPLES="${GLASSBOX_ST_MAX_EXAMPLES:-30}"
MAX_TIME="${GLASSBOX_ST_MAX_TIME:-}"
SEED="${GLASSBOX_ST_SEED:-1}"
CARGO="${CARGO:-cargo}"
PROFILE="${GLASSBOX_ST_PROFILE:-release}"
[[ "$PROFILE" == release || "$PROFILE" == debug ]] || { echo "GLASSBOX_ST_PROFILE must be release or debug" >&2; exit 2; }
PY="${PYTHON:-python3}"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { printf 'schemathesis.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# --- Schemathesis in its own venv -------------------------------------------------------------
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found"
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PY" -m venv "$VENV" || die "'$PY -m venv' failed (Debian: apt-get install python3-venv)"
    fi
    log "installing schemathesis==$VERSION into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "schemathesis==$VERSION" \
        || die "pip install schemathesis==$VERSION failed"
fi

# --- The server -------------------------------------------------------------------------------
cd "$ROOT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/glassbox-schemathesis.XXXXXX")"
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
    if [[ "$PROFILE" == release ]]; then
        log "building the release binary"
        "$CARGO" build --release --quiet --bin glassbox || die "cargo build --release failed"
    else
        log "building the debug binary (already there after cargo test)"
        "$CARGO" build --quiet --bin glassbox || die "cargo build failed"
    fi
    # A private copy: another build may replace the binary in the target folder during the run.
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/glassbox" "$WORK/glassbox"
    GLASSBOX_BIN="$WORK/glassbox"
fi
BIN="$GLASSBOX_BIN"
[[ -x "$BIN" ]] || die "no binary at $BIN"

# Port 0: the server picks a free port and logs it.
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --log-format json --log-level info \
    >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!

PORT=""
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited during start-up"; }
    PORT="$(grep -o '"address":"127\.0\.0\.1:[0-9]*"' "$WORK/server.log" | head -1 | grep -o '[0-9]*"$' | tr -d '"' || true)"
    if [[ -n "$PORT" ]] && "$PY" - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2)
PYEOF
    PORT=""
    sleep 0.2
done
[[ -n "$PORT" ]] || { tail -n 20 "$WORK/server.log" >&2; die "the server did not become ready"; }
BASE="http://127.0.0.1:$PORT"
log "server ready at $BASE (model $MODEL)"

# --- The run ----------------------------------------------------------------------------------
extra=()
[[ -n "$MAX_TIME" ]] && extra+=(--max-time "$MAX_TIME")
status=0
# From the scratch folder: Schemathesis keeps a crash cache in the working directory.
cd "$WORK"
"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 2 \
    --request-timeout 60 \
    --no-color \
    --generation-database none \
    "${extra[@]+"${extra[@]}"}" "$@" || status=$?

if [[ $status -ne 0 ]]; then
    log "failures found (exit $status); the server's log follows"
    grep -v '"request finished"' "$WORK/server.log" | tail -n 40 >&2 || true
fi
exit "$status"
