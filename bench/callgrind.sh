#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure
# that does not move with the machine's load, for before/after comparisons of
# the proxy path (wall-clock benchmarks on shared VMs drift by more than most
# single changes).
#
# One upstream (nginx `return 200`), the proxy under `valgrind --tool=callgrind
# --instr-atstart=no`, a 2 s wrk warm-up, then instrumentation on for a 5 s wrk
# run (`-t1 -c10`) and off again. Instructions are divided by the access-log
# lines written during the counted run (the access log is on, as in proxy.sh).
#
# Usage: bench/callgrind.sh [--targets N] [BINARY...]   gatehouse binaries (default: a release build)
#        bench/callgrind.sh [--targets N] --nginx       the same for an nginx proxy, for scale
#        --targets N spreads the load round-robin over N upstream ports (one upstream
#        nginx), with health checks every 2 s in gatehouse, as proxy.sh --targets does.
# Env:   KEEP=1 keeps the callgrind output (callgrind.out.*, for callgrind_annotate).
#        ACCESS_LOG_FORMAT=json  gatehouse's access log in JSON instead of text.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UPSTREAM_PORT=18190
PROXY_PORT=18191
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
TARGETS=1
if [[ "${1:-}" == "--targets" ]]; then
    TARGETS="${2:-}"
    shift 2 || die "--targets needs a number"
fi
[[ "$TARGETS" =~ ^[1-8]$ ]] || die "--targets must be 1 to 8, not '$TARGETS'"
# The upstream ports: UPSTREAM_PORT, then the ports after PROXY_PORT.
PORTS=("$UPSTREAM_PORT")
for ((t = 1; t < TARGETS; t++)); do PORTS+=($((PROXY_PORT + t))); done
for cmd in valgrind callgrind_control nginx wrk curl; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found (apt-get install -y valgrind nginx wrk curl)"
done
for p in "${PORTS[@]}" "$PROXY_PORT"; do
    port_busy "$p" && die "127.0.0.1:$p is already in use"
done

TMP="$(mktemp -d /tmp/gatehouse-callgrind.XXXXXX)"
declare -A PIDS=()
SERVERS=()
STARTED=()
RUNNING=()
SIDE=""
KEEP="${KEEP:-0}"
trap cleanup EXIT INT TERM

mkdir -p "$TMP/up" "$TMP/ng" "$TMP/data"
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
$(nginx_temp_paths "$TMP/up")
    server {
$(for p in "${PORTS[@]}"; do echo "        listen 127.0.0.1:$p;"; done)
        location / { return 200 "hello world\n"; }
    }
}
EOF
cat >"$TMP/ng/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $TMP/ng/nginx.pid;
error_log $TMP/ng/error.log warn;
events { worker_connections 1024; }
http {
    access_log $TMP/access.log combined;
    keepalive_requests 1000000;
$(nginx_temp_paths "$TMP/ng")
    upstream backend {
$(for p in "${PORTS[@]}"; do echo "        server 127.0.0.1:$p;"; done)
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
gatehouse_proxy_config "$PROXY_PORT" "$TMP/access.log" "$TMP/data" "${PORTS[@]}" >"$TMP/gatehouse.toml"

start upstream 1 nginx -p "$TMP/up/" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf"
for _ in $(seq 1 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/" || { show_output upstream; die "the upstream nginx did not start"; }

# measure LABEL COMMAND...: prints instructions per request.
measure() {
    local label="$1" out="$TMP/callgrind.out.$1" before after total n vpid
    shift
    : >"$TMP/access.log"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
        >"$TMP/$label.out" 2>"$TMP/$label.err" &
    vpid=$!
    for _ in $(seq 1 120); do
        curl -sf -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break
        sleep 0.5
    done
    curl -sf -o /dev/null "http://127.0.0.1:$PROXY_PORT/" || { show_output "$label"; die "$label did not answer 200"; }
    wrk -t1 -c10 -d2s "http://127.0.0.1:$PROXY_PORT/" >/dev/null
    sleep 0.5
    before=$(wc -l <"$TMP/access.log")
    callgrind_control -i on "$vpid" >/dev/null 2>&1
    wrk -t1 -c10 -d5s "http://127.0.0.1:$PROXY_PORT/" >/dev/null
    callgrind_control -i off "$vpid" >/dev/null 2>&1
    sleep 1 # buffered access-log lines reach the file
    after=$(wc -l <"$TMP/access.log")
    kill -TERM "$vpid"
    wait "$vpid" 2>/dev/null || true
    total=$(grep -h '^totals:' "$out"* | awk '{ s += $2 } END { print s }')
    n=$((after - before))
    ((n > 0)) || die "$label answered no requests while counted (see $TMP/$label.err)"
    printf '%-40s %9d requests  %12d instructions  %7d per request\n' "$label" "$n" "$total" $((total / n))
}

if [[ "${1:-}" == "--nginx" ]]; then
    measure nginx nginx -p "$TMP/ng/" -e "$TMP/ng/error.log" -c "$TMP/ng/nginx.conf"
else
    bins=("$@")
    if ((${#bins[@]} == 0)); then
        log "building gatehouse (cargo build --release --bin gatehouse)"
        (cd "$REPO" && cargo build --release --bin gatehouse >&2)
        bins=("${CARGO_TARGET_DIR:-$REPO/target}/release/gatehouse")
    fi
    i=0
    for bin in "${bins[@]}"; do
        [[ -x "$bin" ]] || die "'$bin' is not an executable"
        i=$((i + 1))
        measure "gatehouse-$i" "$bin" serve -c "$TMP/gatehouse.toml"
        echo "  ($bin)"
    done
fi
