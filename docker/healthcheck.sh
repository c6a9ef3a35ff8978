#!/bin/bash
# Container health check: exit 0 if GET PATH on the local glassbox answers 200, else 1.
#
#   healthcheck.sh [PATH]      PATH defaults to /health (liveness); /ready for readiness.
#
# Plain bash (/dev/tcp), so the runtime image needs no curl. Reads the same variables as the
# service: GLASSBOX_SERVER__PORT (default 8080); GLASSBOX_HEALTHCHECK_HOST (default 127.0.0.1,
# for a server bound to one specific address) and GLASSBOX_HEALTHCHECK_TIMEOUT_S (default 3)
# are for this script only. scripts/validate-deploy.sh runs it against a real server.
set -u

path="${1:-/health}"
host="${GLASSBOX_HEALTHCHECK_HOST:-127.0.0.1}"
port="${GLASSBOX_SERVER__PORT:-8080}"
timeout_s="${GLASSBOX_HEALTHCHECK_TIMEOUT_S:-3}"

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "healthcheck: cannot connect to $host:$port" >&2
    exit 1
fi
printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: glassbox-healthcheck\r\nConnection: close\r\n\r\n' \
    "$path" "$host" "$port" >&3
status_line=""
if ! IFS= read -r -t "$timeout_s" status_line <&3; then
    echo "healthcheck: no answer from $host:$port$path within ${timeout_s}s" >&2
    exit 1
fi
exec 3<&-
status_line="${status_line%$'\r'}"
case "$status_line" in
    "HTTP/1."?" 200"*) exit 0 ;;
esac
echo "healthcheck: $host:$port$path answered: $status_line" >&2
exit 1
