# Sourced by the side-by-side benchmark scripts: the baseline venv, a release build and a
# glassbox server on a free loopback port with the row cache off, stopped on exit.
#
#   source scripts/lib/bench-server.sh
#   start_bench_server NAME MODEL_DIR   # sets BASELINE_PY, URL, SERVER (pid), STAMP, LOG
#
# The server runs from a private copy of the release binary: a target directory shared with
# other builds could replace the binary mid-run.
#
# NAME prefixes the messages and the files in bench/results (NAME-<stamp>.server.log, kept
# only when the server wrote something).

start_bench_server() {
    local name="$1" model_dir="$2" port BIN
    scripts/fetch-model.sh "$model_dir" >&2
    # setup-baseline.sh prints the venv's python as its last line of stdout.
    BASELINE_PY="$(scripts/setup-baseline.sh | tail -n 1)"
    [[ -x "$BASELINE_PY" ]] || { echo "$name: baseline python '$BASELINE_PY' not usable" >&2; exit 1; }

    cargo build --release >&2
    BIN="$(mktemp -t "glassbox-$name.XXXXXX")"
    cp "${CARGO_TARGET_DIR:-target}/release/glassbox" "$BIN"
    chmod +x "$BIN"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    URL="http://127.0.0.1:$port"
    mkdir -p bench/results
    STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
    LOG="bench/results/$name-$STAMP.server.log"

    "$BIN" serve --model "$model_dir" --host 127.0.0.1 --port "$port" \
        --cache-rows 0 --request-timeout-ms 600000 --log-level warn >"$LOG" 2>&1 &
    SERVER=$!
    # shellcheck disable=SC2064  # expand now: the trap must stop this server and keep this log
    trap "kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -f '$BIN'; [[ -s '$LOG' ]] || rm -f '$LOG'" EXIT

    echo "$name: waiting for $URL/ready (server pid $SERVER, log $LOG)" >&2
    for _ in $(seq 1 600); do
        if python3 -c "import urllib.request; urllib.request.urlopen('$URL/ready', timeout=2)" 2>/dev/null; then
            echo "$name: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
            return 0
        fi
        kill -0 "$SERVER" 2>/dev/null || { echo "$name: the server exited; see $LOG" >&2; cat "$LOG" >&2; exit 1; }
        sleep 0.5
    done
    echo "$name: the server never became ready; see $LOG" >&2
    exit 1
}
