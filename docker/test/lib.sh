# Shared helpers for scripts/validate-deploy.sh and scripts/measure-memory.sh (sourced, bash).
# shellcheck shell=bash
# Replicas are started the way the image starts them: docker/entrypoint.sh, with the runtime
# stage's ENV lines of docker/Dockerfile, plus only the overrides a test states (the model
# folder, the port, the binary), and checked with docker/healthcheck.sh.

DEPLOY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY_PY="${PYTHON:-python3}"
# Processes started by these helpers (pids), stopped by stop_all on exit.
STARTED_PIDS=()

log() { printf '%s: %s\n' "${LOG_PREFIX:-deploy}" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "${LOG_PREFIX:-deploy}" "$*" >&2; exit 1; }

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    "$DEPLOY_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# build_binary: sets GLASSBOX_BIN to a release build (cargo build --release) unless set.
build_binary() {
    if [[ -n "${GLASSBOX_BIN:-}" ]]; then
        [[ -x "$GLASSBOX_BIN" ]] || die "GLASSBOX_BIN=$GLASSBOX_BIN is not executable"
        return 0
    fi
    log "building the release binary (cargo build --release --bin glassbox) ..."
    (cd "$DEPLOY_ROOT" && "${CARGO:-cargo}" build --release --bin glassbox) >&2 \
        || die "cargo build --release failed"
    GLASSBOX_BIN="${CARGO_TARGET_DIR:-$DEPLOY_ROOT/target}/release/glassbox"
    # A private copy: other builds may replace target/release/glassbox while the tests run.
    local copy
    copy="$(mktemp -d "${TMPDIR:-/tmp}/glassbox-deploy-bin.XXXXXX")"
    cp "$GLASSBOX_BIN" "$copy/glassbox"
    GLASSBOX_BIN="$copy/glassbox"
    DEPLOY_CLEANUP_FILES+=("$copy")
}
DEPLOY_CLEANUP_FILES=()

# ensure_model: sets MODEL_DIR to a verified local copy of the default model.
ensure_model() {
    MODEL_DIR="${MODEL_DIR:-$DEPLOY_ROOT/models/all-MiniLM-L6-v2}"
    case "$MODEL_DIR" in /*) ;; *) MODEL_DIR="$DEPLOY_ROOT/$MODEL_DIR" ;; esac
    "$DEPLOY_ROOT/scripts/fetch-model.sh" "$MODEL_DIR" >&2 || die "cannot fetch the model"
}

# image_env: prints the Dockerfile runtime ENV as KEY=VALUE lines.
image_env() {
    "$DEPLOY_PY" "$DEPLOY_ROOT/docker/test/check_files.py" env "$DEPLOY_ROOT/docker/Dockerfile"
}

# start_replica NAME PORT LOGFILE [KEY=VALUE ...]: starts docker/entrypoint.sh (which execs
# glassbox serve) in the background with the image's environment, the local model at the
# image's model path setting, PORT, and the extra settings given. Sets REPLICA_PID.
start_replica() {
    local name="$1" port="$2" logfile="$3"
    shift 3
    local -a envs=()
    local line
    while IFS= read -r line; do envs+=("$line"); done < <(image_env)
    # Overrides: where the model and the binary are here, the port, then the caller's.
    envs+=("GLASSBOX_MODEL__SOURCE=$MODEL_DIR" "GLASSBOX_SERVER__PORT=$port" "GLASSBOX_BIN=$GLASSBOX_BIN")
    envs+=("$@")
    # A clean environment like a container's: nothing but PATH, HOME and the image's ENV.
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${TMPDIR:-/tmp}" "${envs[@]}" \
        "$DEPLOY_ROOT/docker/entrypoint.sh" >"$logfile" 2>&1 &
    REPLICA_PID=$!
    STARTED_PIDS+=("$REPLICA_PID")
    log "$name: pid $REPLICA_PID on 127.0.0.1:$port (log $logfile)"
}

# healthcheck PORT PATH: docker/healthcheck.sh against a replica on PORT.
healthcheck() {
    GLASSBOX_SERVER__PORT="$1" "$DEPLOY_ROOT/docker/healthcheck.sh" "$2" 2>/dev/null
}

# wait_for PORT PATH SECONDS PID: until healthcheck passes; fails if PID exits first.
wait_for() {
    local port="$1" path="$2" seconds="$3" pid="$4" i
    for ((i = 0; i < seconds * 10; i++)); do
        healthcheck "$port" "$path" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# stop_pid PID [SIGNAL]: signals one process we started and waits for it (at most 20 s).
stop_pid() {
    local pid="$1" sig="${2:-TERM}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still running 20 s after SIG$sig; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_all: every process started here, then temporary files.
stop_all() {
    local pid
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        stop_pid "$pid" TERM
    done
    STARTED_PIDS=()
    local f
    for f in "${DEPLOY_CLEANUP_FILES[@]+"${DEPLOY_CLEANUP_FILES[@]}"}"; do rm -rf -- "$f"; done
}
