#!/usr/bin/env bash
# TLS benchmark: gatehouse against nginx and Caddy, same ECDSA P-256 certificate.
#
# Two measurements, each with h2load against a `200 ok` answered by the server itself:
#   handshakes  new TLS connections per second: HTTP/1.1 with `Connection: close`,
#               so every request is a full handshake (no resumption), --handshakes
#               of them per run;
#   h2          HTTPS HTTP/2 requests per second over kept-alive connections
#               (ALPN h2, 10 streams per connection).
# First every server is pinned to CPU 0 with one worker/thread and h2load runs on
# CPU 1; then servers and h2load share both cores (two workers each). Servers run one
# at a time, A B C A B C ..., and the script prints the median of the rounds, with
# each server's CPU time per handshake or request (the fair comparison when the
# single-threaded h2load, not the server, is the bottleneck).
#
# Usage: bench/tls.sh [--rounds 3] [--duration 8] [--connections 50] [--handshakes 20000]
#                     [--only nginx,caddy,gatehouse] [--keep] [--wait-quiet SECONDS]
# Env:   GATEHOUSE_BIN=path  use this binary instead of `cargo build --release`.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=3
DURATION=8
CONNECTIONS=50
HANDSHAKES=20000
ONLY="nginx,caddy,gatehouse"
KEEP=0
WAIT_QUIET=0
QUIET_PCT=15
SERVER_CPU=0
LOAD_CPU=1
declare -A PORT=([nginx]=18441 [caddy]=18442 [gatehouse]=18443)
declare -A PIDS=()
STARTED=()
RUNNING=()
SIDE=""

while (($#)); do
    case "$1" in
    --rounds) ROUNDS="$2" && shift 2 ;;
    --duration) DURATION="$2" && shift 2 ;;
    --connections) CONNECTIONS="$2" && shift 2 ;;
    --handshakes) HANDSHAKES="$2" && shift 2 ;;
    --only) ONLY="$2" && shift 2 ;;
    --wait-quiet) WAIT_QUIET="$2" && shift 2 ;;
    --keep) KEEP=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
int_in_range rounds "$ROUNDS" 1 20
int_in_range duration "$DURATION" 1 120
int_in_range connections "$CONNECTIONS" 1 1000
int_in_range handshakes "$HANDSHAKES" 100 1000000
IFS=, read -r -a SERVERS <<<"$ONLY"
for s in "${SERVERS[@]}"; do [[ -n "${PORT[$s]:-}" ]] || die "unknown server $s"; done
for tool in h2load openssl taskset; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y nghttp2-client openssl util-linux)"; done
want nginx && { command -v nginx >/dev/null || die "nginx is missing (apt-get install -y nginx)"; }
want caddy && { command -v caddy >/dev/null || die "caddy is missing (apt-get install -y caddy)"; }

TMP="$(mktemp -d /tmp/gatehouse-bench-tls.XXXXXX)"
trap cleanup EXIT INT TERM

if [[ -z "${GATEHOUSE_BIN:-}" ]]; then
    log "building gatehouse (release)"
    cargo build --release -q -p gatehouse
    GATEHOUSE_BIN="${CARGO_TARGET_DIR:-target}/release/gatehouse"
fi

log "making an ECDSA P-256 certificate for localhost"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" 2>/dev/null

# configure WORKERS: one config file per server.
configure() {
    local workers="$1"
    cat >"$TMP/nginx.conf" <<EOF
worker_processes $workers;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl http2 reuseport;
        server_name localhost;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        keepalive_requests 100000;
        location / { return 200 "ok"; }
    }
}
EOF
    cat >"$TMP/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
https://localhost:${PORT[caddy]} {
    bind 127.0.0.1
    tls $TMP/cert.pem $TMP/key.pem
    respond "ok" 200
}
EOF
    cat >"$TMP/gatehouse.toml" <<EOF
[server]
http = []
https = ["127.0.0.1:${PORT[gatehouse]}"]
workers = $workers
data_dir = "$TMP/gatehouse-data"
[log]
level = "warn"
access_log = "off"
[limits]
keepalive_requests = 100000
[[site]]
hosts = ["localhost"]
tls = { cert = "$TMP/cert.pem", key = "$TMP/key.pem" }
hsts = false
route = [{ path = "/", respond = { body = "ok" } }]
EOF
}

launch() { # NAME CPUS
    local name="$1" cpus="$2" workers="$3"
    case "$name" in
    nginx) start nginx "$cpus" nginx -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -g "daemon off;" ;;
    caddy) start caddy "$cpus" env GOMAXPROCS="$workers" HOME="$TMP" XDG_DATA_HOME="$TMP" XDG_CONFIG_HOME="$TMP" caddy run --adapter caddyfile --config "$TMP/Caddyfile" ;;
    gatehouse) start gatehouse "$cpus" "$GATEHOUSE_BIN" serve -c "$TMP/gatehouse.toml" ;;
    esac
    local i
    for ((i = 0; i < 100; i++)); do
        port_busy "${PORT[$name]}" && return 0
        sleep 0.1
    done
    show_output "$name"
    die "$name did not listen on ${PORT[$name]}"
}

stop() {
    local name="$1" pid="${PIDS[$1]}"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    STARTED=("${STARTED[@]/$pid/}")
}

HZ="$(getconf CLK_TCK)"

# measure NAME KIND CPUS -> "requests/s ok failed server-CPU-µs/request" (or "fail")
measure() {
    local name="$1" kind="$2" cpus="$3" out="$TMP/$1-$2-$RANDOM.h2load"
    # The server's CPU time (nginx: master and worker) around the run: when the
    # client is the bottleneck, CPU per handshake still compares the servers.
    local -a pids
    read -r -a pids <<<"${PIDS[$name]} $(children "${PIDS[$name]}")"
    local ticks0 ticks1
    ticks0="$(cpu_ticks "${pids[@]}")"
    # `localhost` resolves to 127.0.0.1 here: SNI and Host both name the site.
    local url="https://localhost:${PORT[$name]}/"
    case "$kind" in
    handshakes)
        # A request count, not -D: h2load 1.52 never ends a timed run whose
        # connections the server closes.
        taskset -c "$cpus" timeout 120 h2load --h1 -n "$HANDSHAKES" -c "$CONNECTIONS" -H "connection: close" \
            "$url" >"$out" 2>&1 || true ;;
    h2)
        taskset -c "$cpus" timeout $((DURATION + 60)) h2load -D "$DURATION" -c "$CONNECTIONS" -m 10 "$url" >"$out" 2>&1 || true ;;
    esac
    ticks1="$(cpu_ticks "${pids[@]}")"
    awk -v ticks=$((ticks1 - ticks0)) -v hz="$HZ" \
        '/^finished in/ { gsub(/,/, ""); rps = $4 } /^requests:/ { ok = $8; total = $2 }
         END { if (rps == "" || ok == 0) print "fail";
               else printf "%.0f %d %d %.1f\n", rps, ok, total - ok, ticks * 1e6 / hz / ok }' "$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }

declare -A RESULT=()
run_phase() { # LABEL SERVER_CPUS LOAD_CPUS WORKERS
    local label="$1" scpus="$2" lcpus="$3" workers="$4" round name kind line rps cpu
    configure "$workers"
    declare -A samples=()
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${SERVERS[@]}"; do
            if ((WAIT_QUIET > 0)); then
                QUIET_DEADLINE=$((SECONDS + WAIT_QUIET))
                wait_quiet || log "machine still busy; measuring anyway"
            fi
            launch "$name" "$scpus" "$workers"
            for kind in handshakes h2; do
                line="$(measure "$name" "$kind" "$lcpus")"
                log "$label round $round: $name $kind: $line"
                if [[ "$line" != fail ]]; then
                    read -r rps _ _ cpu <<<"$line"
                    samples[$name/$kind]+="$rps "
                    samples[$name/$kind/cpu]+="$cpu "
                fi
            done
            stop "$name"
        done
    done
    for name in "${SERVERS[@]}"; do
        for kind in handshakes h2; do
            RESULT[$label/$name/$kind]="$(tr ' ' '\n' <<<"${samples[$name/$kind]:-}" | sed '/^$/d' | median)"
            RESULT[$label/$name/$kind/cpu]="$(tr ' ' '\n' <<<"${samples[$name/$kind/cpu]:-}" | sed '/^$/d' | median)"
        done
    done
}

read -r busy0 busy1 < <(busy_now)
log "other load before the runs: CPU0 ${busy0}%, CPU1 ${busy1}%"
run_phase "1 core" "$SERVER_CPU" "$LOAD_CPU" 1
run_phase "2 cores" "0,1" "0,1" 2

printf '\n%-10s %-10s %14s %16s %15s %16s\n' "cores" "server" "handshakes/s" "CPU µs/handshake" "h2 requests/s" "CPU µs/h2 req"
for label in "1 core" "2 cores"; do
    for name in "${SERVERS[@]}"; do
        printf '%-10s %-10s %14s %16s %15s %16s\n' "$label" "$name" \
            "${RESULT[$label/$name/handshakes]}" "${RESULT[$label/$name/handshakes/cpu]}" \
            "${RESULT[$label/$name/h2]}" "${RESULT[$label/$name/h2/cpu]}"
    done
done
echo
echo "h2load: $CONNECTIONS connections; $HANDSHAKES handshakes, h2 ${DURATION}s per run, median of $ROUNDS rounds; CPU busy before: ${busy0}%/${busy1}%"
