#!/usr/bin/env bash
# Reverse-proxy benchmark: gatehouse against nginx and HAProxy, side by side.
#
# Every proxy is pinned to CPU 0, runs one worker/thread, writes an access log to a
# file and keeps connections to one shared upstream (an nginx `return 200` server on
# CPU 1). wrk, also on CPU 1, drives each proxy in turn, A B C C B A ..., and the
# script reports the median of the rounds and gatehouse's ratio to each peer.
# See bench/README.md for what is measured and how to read the table.
#
# Usage: bench/proxy.sh [--rounds 3] [--duration 8] [--connections 50]
#                       [--only nginx,haproxy,gatehouse] [--warmup 2]
#                       [--perf] [--profile] [--keep] [--wait-quiet SECONDS]
#        --only gatehouse,policies compares the plain route with the same route
#        behind a rate limit and a CORS policy.
#        --targets 4 spreads the load round-robin over 4 upstream ports (one
#        upstream nginx), with active health checks every 2 s in HAProxy and
#        gatehouse (nginx has none).
# Env:   GATEHOUSE_BIN=path  use this binary instead of `cargo build --release`.
#        GATEHOUSE_BASELINE_BIN=path  with --only ...,baseline: run this second
#        gatehouse build in the same rounds (before/after comparisons).
#        ACCESS_LOG_FORMAT=json  gatehouse's access log in JSON instead of text.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- settings
ROUNDS=3
DURATION=8
CONNECTIONS=50
TARGETS=1 # upstream targets; with more than one, health checks are on
WARMUP=2
ONLY="nginx,haproxy,gatehouse"
PERF=0
PROFILE=0
KEEP=0
WAIT_QUIET=0 # seconds to wait for other load on the machine to go away
QUIET_PCT=15 # a core busier than this before the runs counts as "not quiet"
DISTURBED_PCT=10 # a run is disturbed when other work took more of the proxy's core

SERVER_CPU=0 # every proxy runs here, alone
LOAD_CPU=1  # wrk and the upstream share this one

UPSTREAM_PORT=18080
declare -A PORT=([nginx]=18081 [haproxy]=18082 [gatehouse]=18083 [policies]=18084 [baseline]=18085 [direct]=18080)
declare -A LABEL=(
    [direct]="direct upstream (no proxy)"
    [nginx]="nginx (1 worker)"
    [haproxy]="HAProxy (1 thread)"
    [gatehouse]="gatehouse (1 worker)"
    [policies]="gatehouse with rate limit + CORS (1 worker)"
    [baseline]="gatehouse baseline build (1 worker)"
)
ORDER=(nginx haproxy gatehouse policies baseline) # the A B C of odd rounds; even rounds reverse it




INVOCATION="bench/proxy.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then INVOCATION+=" $arg"; else INVOCATION+=" $(printf '%q' "$arg")"; fi
done

while (($#)); do
    case "$1" in
    --rounds | --duration | --connections | --warmup | --only | --wait-quiet | --targets)
        (($# >= 2)) || die "$1 needs a value"
        opt="${1#--}"
        val="$2"
        shift 2
        ;;
    --rounds=* | --duration=* | --connections=* | --warmup=* | --only=* | --wait-quiet=* | --targets=*)
        opt="${1%%=*}"
        opt="${opt#--}"
        val="${1#*=}"
        shift
        ;;
    --perf) PERF=1; shift; continue ;;
    --profile) PROFILE=1; shift; continue ;;
    --keep) KEEP=1; shift; continue ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    case "$opt" in
    rounds) ROUNDS="$val" ;;
    duration) DURATION="${val%s}" ;;
    connections) CONNECTIONS="$val" ;;
    warmup) WARMUP="${val%s}" ;;
    only) ONLY="$val" ;;
    wait-quiet) WAIT_QUIET="${val%s}" ;;
    targets) TARGETS="$val" ;;
    esac
done

int_in_range rounds "$ROUNDS" 1 50
int_in_range duration "$DURATION" 1 600
int_in_range connections "$CONNECTIONS" 1 10000
int_in_range targets "$TARGETS" 1 16
int_in_range warmup "$WARMUP" 0 60
int_in_range wait-quiet "$WAIT_QUIET" 0 3600

SERVERS=()
IFS=',' read -r -a wanted <<<"$ONLY"
for s in "${ORDER[@]}"; do
    for w in "${wanted[@]}"; do [[ "$w" == "$s" ]] && SERVERS+=("$s") && break; done
done
for w in "${wanted[@]}"; do
    [[ -n "${PORT[$w]:-}" && "$w" != direct ]] || die "--only: unknown server '$w' (nginx, haproxy, gatehouse, policies, baseline)"
done
((${#SERVERS[@]})) || die "--only selected no server"

# ---------------------------------------------------------------- preflight
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

for cmd in nginx wrk curl taskset awk ps; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found (apt-get install -y nginx wrk curl util-linux procps)"
done
want haproxy && { command -v haproxy >/dev/null || die "'haproxy' not found (apt-get install -y haproxy)"; }
(($(nproc) >= 2)) || die "needs at least 2 CPUs (proxies on CPU $SERVER_CPU, wrk and upstream on CPU $LOAD_CPU)"
if ((PERF || PROFILE)); then command -v perf >/dev/null || die "--perf/--profile need 'perf' (apt-get install -y linux-perf)"; fi
if ((PROFILE)) && ! want gatehouse; then die "--profile profiles gatehouse; include it in --only"; fi

for p in "$UPSTREAM_PORT" $(for s in "${SERVERS[@]}"; do echo "${PORT[$s]}"; done); do
    port_busy "$p" && die "127.0.0.1:$p is already in use; stop whatever listens there (a system nginx/haproxy service?)"
done

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_NEED=$((CONNECTIONS * 2 + 256))
(($(ulimit -n) >= FD_NEED)) || die "open-file limit $(ulimit -n) is below $FD_NEED for $CONNECTIONS connections"

# The source the binary is built from, taken now: the tree may move during the run.
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit yet')"
if [[ -n "$(git -C "$REPO" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then GIT_REV+=" (+ uncommitted changes)"; fi
GATEHOUSE=""
if want gatehouse || want policies; then
    if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
        GATEHOUSE="$GATEHOUSE_BIN"
    else
        # --bin rather than -p: the binary is what is measured, whatever its crate is called.
        log "building gatehouse (cargo build --release --bin gatehouse)"
        cargo build --release --bin gatehouse >&2
        GATEHOUSE="${CARGO_TARGET_DIR:-$REPO/target}/release/gatehouse"
    fi
    [[ -x "$GATEHOUSE" ]] || die "gatehouse binary '$GATEHOUSE' is missing or not executable"
fi

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")"
STARTED=() # every server pid this script started (children are added once seen)
RUNNING=() # the wrk run in progress, if any
SIDE=""    # the perf run in progress, if any

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A PIDS # server -> "pid [child pids...]"




# wait_ready NAME PORT : until GET / answers 200 "hello world" (at most 10 s)
wait_ready() {
    local name="$1" port="$2" pid="${PIDS[$1]%% *}" i body
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_output "$name"
            die "$name exited during startup"
        fi
        if body="$(curl -fsS -m 1 "http://127.0.0.1:$port/" 2>/dev/null)" && [[ "$body" == "hello world" ]]; then
            local c
            for c in $(children "$pid"); do # nginx workers
                STARTED+=("$c")
                PIDS[$name]+=" $c"
            done
            return 0
        fi
        sleep 0.1
    done
    show_output "$name"
    die "$name did not answer 'hello world' on 127.0.0.1:$port within 10 s"
}

WORKER_CONNECTIONS=$((CONNECTIONS * 2 + 1024))

mkdir -p "$TMP/nginx-upstream" "$TMP/nginx"
cat >"$TMP/nginx-upstream/nginx.conf" <<EOF
# Shared upstream: the cheapest possible answer, so it is never the bottleneck.
worker_processes 1;
daemon off;
pid $TMP/nginx-upstream/nginx.pid;
error_log $TMP/nginx-upstream/error.log warn;
events { worker_connections $WORKER_CONNECTIONS; }
http {
    access_log off;
    keepalive_requests 1000000;
$(nginx_temp_paths "$TMP/nginx-upstream")
$(for ((t = 0; t < TARGETS; t++)); do
    printf '    server {\n        listen 127.0.0.1:%d;\n        location / { return 200 "hello world\\n"; }\n    }\n' $((UPSTREAM_PORT + 10 + t))
done)
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { return 200 "hello world\n"; }
    }
}
EOF
# The proxies' targets: the direct port alone, or TARGETS other ports.
TARGET_PORTS=()
if ((TARGETS > 1)); then
    for ((t = 0; t < TARGETS; t++)); do TARGET_PORTS+=($((UPSTREAM_PORT + 10 + t))); done
else
    TARGET_PORTS=("$UPSTREAM_PORT")
fi

cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $WORKER_CONNECTIONS; }
http {
    access_log $TMP/nginx-access.log combined;
    keepalive_requests 1000000;
$(nginx_temp_paths "$TMP/nginx")
    upstream backend {
$(for p in "${TARGET_PORTS[@]}"; do echo "        server 127.0.0.1:$p;"; done)
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $WORKER_CONNECTIONS
    # Access log as raw lines on stdout, which the script sends to a file.
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend upstream

backend upstream
    balance roundrobin
$(for p in "${TARGET_PORTS[@]}"; do
    if ((TARGETS > 1)); then
        echo "    server upstream$p 127.0.0.1:$p check inter 2s"
    else
        echo "    server upstream$p 127.0.0.1:$p"
    fi
done)
EOF

gatehouse_proxy_config "${PORT[gatehouse]}" "$TMP/gatehouse-access.log" "$TMP/gatehouse-data" "${TARGET_PORTS[@]}" >"$TMP/gatehouse.toml"

# The same proxy with a rate limit (high enough never to refuse, so every
# request pays for a decision) and a CORS policy matching wrk's Origin header.
sed -e "s/127.0.0.1:${PORT[gatehouse]}/127.0.0.1:${PORT[policies]}/" \
    -e "s|gatehouse-access.log|policies-access.log|" \
    -e "s|gatehouse-data|policies-data|" \
    -e 's|  upstream = "backend"|  upstream = "backend"\n  rate_limit = "1000000/s per ip"\n  cors = "web"|' \
    "$TMP/gatehouse.toml" >"$TMP/policies.toml"
cat >>"$TMP/policies.toml" <<EOF

[cors.web]
origins = ["https://app.example.com"]
credentials = true
EOF

if want baseline; then
    [[ -x "${GATEHOUSE_BASELINE_BIN:-}" ]] || die "--only ...,baseline needs GATEHOUSE_BASELINE_BIN=path to another gatehouse binary"
    cp "$GATEHOUSE_BASELINE_BIN" "$TMP/gatehouse-baseline"
    sed -e "s/127.0.0.1:${PORT[gatehouse]}/127.0.0.1:${PORT[baseline]}/" \
        -e "s|gatehouse-access.log|baseline-access.log|" \
        -e "s|gatehouse-data|baseline-data|" \
        "$TMP/gatehouse.toml" >"$TMP/baseline.toml"
fi

if want gatehouse || want policies; then
    # Run a private copy: a rebuild during the run must not swap the binary under test
    # (and perf needs the file to resolve symbols).
    cp "$GATEHOUSE" "$TMP/gatehouse"
    GATEHOUSE="$TMP/gatehouse"
    "$GATEHOUSE" check -c "$TMP/gatehouse.toml" >"$TMP/gatehouse-check.out" 2>&1 || {
        cat "$TMP/gatehouse-check.out" >&2
        die "gatehouse check rejected the benchmark config (bench/proxy.sh writes it; adapt it to docs/config.md)"
    }
    "$GATEHOUSE" check -c "$TMP/policies.toml" >"$TMP/policies-check.out" 2>&1 || {
        cat "$TMP/policies-check.out" >&2
        die "gatehouse check rejected the policies config"
    }
fi

log "starting upstream nginx on 127.0.0.1:$UPSTREAM_PORT (CPU $LOAD_CPU)"
start upstream "$LOAD_CPU" nginx -p "$TMP/nginx-upstream/" -e "$TMP/nginx-upstream/error.log" -c "$TMP/nginx-upstream/nginx.conf"
wait_ready upstream "$UPSTREAM_PORT"
PIDS[direct]="${PIDS[upstream]}"

for s in "${SERVERS[@]}"; do
    log "starting $s on 127.0.0.1:${PORT[$s]} (CPU $SERVER_CPU)"
    case "$s" in
    nginx) start nginx "$SERVER_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ;;
    haproxy)
        # shellcheck disable=SC2016 # $1 and $2 belong to the inner sh
        start haproxy "$SERVER_CPU" sh -c 'exec haproxy -db -f "$1" 2>"$2"' sh "$TMP/haproxy.cfg" "$TMP/haproxy.err"
        ;;
    gatehouse) start gatehouse "$SERVER_CPU" "$GATEHOUSE" serve -c "$TMP/gatehouse.toml" ;;
    policies) start policies "$SERVER_CPU" "$GATEHOUSE" serve -c "$TMP/policies.toml" ;;
    baseline) start baseline "$SERVER_CPU" "$TMP/gatehouse-baseline" serve -c "$TMP/baseline.toml" ;;
    esac
    wait_ready "$s" "${PORT[$s]}"
done
# HAProxy's stdout is its access log.
if want haproxy; then ln -s "$TMP/haproxy.out" "$TMP/haproxy-access.log"; fi




HZ="$(getconf CLK_TCK)"


# run_wrk SERVER OUTFILE SECONDS
# Runs in the background and is waited for, so a signal reaches the trap at once.
run_wrk() {
    timeout -k 5 $(($3 + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"$3"s --latency -H "Origin: https://app.example.com" \
        "http://127.0.0.1:${PORT[$1]}/" >"$2" 2>&1 </dev/null &
    local job=$!
    RUNNING+=("$job")
    if ! wait "$job"; then
        RUNNING=()
        cat "$2" >&2
        die "wrk against $1 failed"
    fi
    RUNNING=()
}


# round server rps p50 p99 requests non-2xx socket-errors proxy-CPU% CPU0-busy% CPU1-busy% proxy-CPU-µs/request
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

measure() { # ROUND SERVER
    local round="$1" s="$2" out="$TMP/wrk-$2-$1.txt"
    local -a pids
    read -r -a pids <<<"${PIDS[$s]}"
    local t0 t1 c0t0 c0i0 c1t0 c1i0 c0t1 c0i1 c1t1 c1i1 ticks0 ticks1 parsed
    read -r c0t0 c0i0 < <(cpu_line "$SERVER_CPU")
    read -r c1t0 c1i0 < <(cpu_line "$LOAD_CPU")
    ticks0="$(cpu_ticks "${pids[@]}")"
    t0="$(date +%s.%N)"
    run_wrk "$s" "$out" "$DURATION"
    t1="$(date +%s.%N)"
    ticks1="$(cpu_ticks "${pids[@]}")"
    read -r c0t1 c0i1 < <(cpu_line "$SERVER_CPU")
    read -r c1t1 c1i1 < <(cpu_line "$LOAD_CPU")
    parsed="$(parse_wrk "$out")" || {
        cat "$out" >&2
        die "could not parse wrk output for $s"
    }
    awk -v r="$round" -v s="$s" -v p="$parsed" -v hz="$HZ" \
        -v t0="$t0" -v t1="$t1" -v k0="$ticks0" -v k1="$ticks1" \
        -v a0="$c0t0" -v i0="$c0i0" -v a1="$c0t1" -v i1="$c0i1" \
        -v b0="$c1t0" -v j0="$c1i0" -v b1="$c1t1" -v j1="$c1i1" 'BEGIN {
            wall = t1 - t0
            proxy = (k1 - k0) / hz / wall * 100
            busy0 = (a1 > a0) ? 100 * (1 - (i1 - i0) / (a1 - a0)) : 0
            busy1 = (b1 > b0) ? 100 * (1 - (j1 - j0) / (b1 - b0)) : 0
            split(p, f, " ")
            us = f[4] > 0 ? (k1 - k0) / hz / f[4] * 1e6 : 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.2f\n", r, s, f[1], f[2], f[3], f[4], f[5], f[6], proxy, busy0, busy1, us
        }' >>"$RESULTS"
    local line
    line="$(tail -n 1 "$RESULTS")"
    awk -F'\t' -v c0="$SERVER_CPU" -v c1="$LOAD_CPU" '{
        printf "    %-10s round %s: %6.0f req/s  p50 %.2f ms  p99 %.2f ms  %s CPU %s%% (%.1f us/req)  CPU%s/CPU%s busy %s%%/%s%%%s\n",
            $2, $1, $3, $4, $5, ($2 == "direct" ? "upstream" : "proxy"), $9, $12, c0, c1, $10, $11,
            ($7 + $8 > 0 ? "  ERRORS: " $7 " non-2xx, " $8 " socket" : "") }' <<<"$line" >&2
}

QUIET_NOTE=""
QUIET_DEADLINE=$((SECONDS + WAIT_QUIET)) # one budget for the whole run
if ! wait_quiet; then
    QUIET_NOTE="before the runs the machine was busy with other work"
    log "warning: $QUIET_NOTE; numbers will be noisy (--wait-quiet SECONDS waits for a quiet machine)"
fi

# measure_clean ROUND SERVER : with --wait-quiet, a disturbed run is thrown away and
# redone (twice at most).
measure_clean() {
    local attempt other
    for ((attempt = 0; attempt < 3; attempt++)); do
        ((WAIT_QUIET == 0 || attempt == 0)) || wait_quiet || true
        measure "$1" "$2"
        ((WAIT_QUIET > 0)) || return 0
        [[ "$2" != direct ]] || return 0
        other="$(tail -n 1 "$RESULTS" | awk -F'\t' '{ print int($10 - $9) }')"
        ((other > DISTURBED_PCT)) || return 0
        ((attempt < 2 && SECONDS < QUIET_DEADLINE)) || return 0
        log "other work took ${other}% of CPU$SERVER_CPU during that run; redoing it"
        sed -i '$d' "$RESULTS"
    done
}

declare -A IDLE_KB
for s in "${SERVERS[@]}"; do
    read -r -a p <<<"${PIDS[$s]}"
    IDLE_KB[$s]="$(mem_kb VmRSS "${p[@]}")"
done

if ((WARMUP > 0)); then
    log "warm-up, ${WARMUP}s each (not recorded)"
    for s in "${SERVERS[@]}"; do run_wrk "$s" "$TMP/wrk-$s-warmup.txt" "$WARMUP"; done
fi

log "direct-upstream baseline (wrk and upstream both on CPU $LOAD_CPU, as in the proxy runs)"
measure_clean 0 direct

# Odd rounds run the servers in order, even rounds in reverse (A B C, C B A, ...),
# so no server always runs right after the same one or always first.
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    order=("${SERVERS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do order+=("${SERVERS[i]}"); done
    fi
    for s in "${order[@]}"; do measure_clean "$round" "$s"; done
done

declare -A PEAK_KB
for s in "${SERVERS[@]}"; do
    read -r -a p <<<"${PIDS[$s]}"
    PEAK_KB[$s]="$(mem_kb VmHWM "${p[@]}")"
done


# Extra, unrecorded runs under perf: syscalls and CPU per request.
PERF_TSV="$TMP/perf.tsv"
: >"$PERF_TSV"
if ((PERF)); then
    log "perf stat runs (${DURATION}s each, not part of the table)"
    for s in "${SERVERS[@]}"; do
        window=$((DURATION > 3 ? DURATION - 2 : 1))
        read -r -a p <<<"${PIDS[$s]}"
        ((WAIT_QUIET == 0)) || wait_quiet || true
        side_job perf stat -x, -e raw_syscalls:sys_enter,task-clock,context-switches \
            -p "$(join_comma "${p[@]}")" -o "$TMP/perf-$s.csv" -- sleep "$window"
        run_wrk "$s" "$TMP/wrk-$s-perf.txt" "$DURATION"
        wait "$SIDE" || log "perf stat failed for $s (see --keep and perf.out)"
        SIDE=""
        rps="$(parse_wrk "$TMP/wrk-$s-perf.txt" | awk '{ print $1 }')"
        awk -F, -v s="$s" -v rps="$rps" -v w="$window" '
            $3 == "raw_syscalls:sys_enter" { sc = $1 }
            $3 == "task-clock" { tc = $1 }
            $3 == "context-switches" { cs = $1 }
            END {
                n = rps * w
                if (n > 0) printf "%s\t%.0f\t%.2f\t%.2f\t%.3f\n", s, rps, sc / n, tc * 1000 / n, cs / n
            }' "$TMP/perf-$s.csv" >>"$PERF_TSV"
    done
fi

PROFILE_TXT=""
if ((PROFILE)); then
    log "perf record of gatehouse under load (${DURATION}s, not part of the table)"
    window=$((DURATION > 3 ? DURATION - 2 : 1))
    ((WAIT_QUIET == 0)) || wait_quiet || true
    # shellcheck disable=SC2086 # the pid list is split on purpose
    side_job perf record -q -e cpu-clock -F 999 -p "$(join_comma ${PIDS[gatehouse]})" \
        -o "$TMP/perf-gatehouse.data" -- sleep "$window"
    run_wrk gatehouse "$TMP/wrk-gatehouse-profile.txt" "$DURATION"
    wait "$SIDE" || log "perf record failed (see --keep and perf.out)"
    SIDE=""
    PROFILE_TXT="$(perf report -i "$TMP/perf-gatehouse.data" --stdio --no-children --sort dso 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 5 || true)"
    PROFILE_TXT+=$'\n\n'
    PROFILE_TXT+="$(perf report -i "$TMP/perf-gatehouse.data" --stdio --no-children --fields overhead,dso,sym --percent-limit 1.5 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 30 || true)"
    PROFILE_TXT+=$'\n\n'"inside the gatehouse binary (share of all samples):"$'\n'
    PROFILE_TXT+="$(perf report -i "$TMP/perf-gatehouse.data" --stdio --no-children --dsos gatehouse --fields overhead,sym 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 15 || true)"
fi

sleep 1 # let buffered access logs reach their files
declare -A LOG_LINES
for s in "${SERVERS[@]}"; do
    f="$TMP/$s-access.log"
    LOG_LINES[$s]="$( [[ -e "$f" ]] && wc -l <"$f" || echo 0)"
done

# ---------------------------------------------------------------- report
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
NPROC="$(nproc)"
NGINX_V="$(nginx -v 2>&1 | sed 's/^nginx version: nginx\///')"
HAPROXY_V="$(command -v haproxy >/dev/null && haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }' || echo '-')"
WRK_V="$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }' || true)"
GH_V="-"
if want gatehouse; then GH_V="$("$GATEHOUSE" --version 2>/dev/null | head -n 1 || echo '?')"; fi
STAMP="$(date +%Y-%m-%d-%H%M%S)"

# clean_rows SERVER : the server's rows from undisturbed runs, or all its rows if
# every run was disturbed.
clean_rows() {
    awk -F'\t' -v s="$1" -v d="$DISTURBED_PCT" '
        $2 == s { all[++n] = $0; if (s == "direct" || $10 - $9 <= d) clean[++k] = $0 }
        END { if (k) for (i = 1; i <= k; i++) print clean[i]; else for (i = 1; i <= n; i++) print all[i] }' "$RESULTS"
}

# median_min_max: numbers on stdin, one per line -> "median min max" ("- - -" for none)
median_min_max() {
    sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "- - -"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR]
        }'
}

# stat_col SERVER COLUMN -> "median min max" over the server's clean runs
stat_col() {
    clean_rows "$1" | awk -F'\t' -v c="$2" '{ print $c }' | median_min_max
}

# round_values PEER [COLUMN] -> gatehouse's value over PEER's (req/s, or the
# COLUMN given: 5 is p99), one line per round in which both ran cleanly. Load
# from elsewhere on a shared machine drifts over minutes; within a round both ran
# seconds apart, so these ratios drift less than the ratio of the two medians.
round_values() {
    { clean_rows gatehouse; clean_rows "$1"; } | awk -F'\t' -v p="$1" -v c="${2:-3}" '
        $2 == "gatehouse" { g[$1] = $c }
        $2 == p { q[$1] = $c }
        END { for (r in g) if ((r in q) && q[r] > 0) print g[r] / q[r] }'
}

# round_ratios PEER [COLUMN] -> "median min max" of round_values
round_ratios() {
    round_values "$@" | median_min_max
}

# p99_rounds PEER -> "W N": in W of the N rounds where both ran cleanly,
# gatehouse's p99 was no higher than PEER's.
p99_rounds() {
    round_values "$1" 5 | awk '{ n++; if ($1 <= 1) w++ } END { print w + 0, n + 0 }'
}

# runs_used SERVER -> "2/3": runs the medians are taken from / runs made
runs_used() {
    echo "$(clean_rows "$1" | wc -l)/$(awk -F'\t' -v s="$1" '$2 == s { n++ } END { print n + 0 }' "$RESULTS")"
}

report() {
    local s rps p50 p99 cpu us mn mx bad flag
    local contended all_disturbed
    contended="$(awk -F'\t' -v d="$DISTURBED_PCT" '$2 != "direct" && $10 - $9 > d { n++ } END { print n + 0 }' "$RESULTS")"
    all_disturbed=""
    for s in "${SERVERS[@]}"; do
        awk -F'\t' -v s="$s" -v d="$DISTURBED_PCT" '$2 == s && $10 - $9 <= d { ok = 1 } END { exit !ok }' "$RESULTS" ||
            all_disturbed+=" $s"
    done
    echo "# Proxy benchmark, $STAMP"
    echo
    echo "- command: \`$INVOCATION\`${GATEHOUSE_BIN:+ with \`GATEHOUSE_BIN=$GATEHOUSE_BIN\`}"
    echo "- machine: $NPROC × $CPU_MODEL, Linux $(uname -r)"
    echo "- gatehouse: $GH_V (git: $GIT_REV); nginx $NGINX_V; HAProxy $HAPROXY_V; wrk $WRK_V"
    echo "- load: \`taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`, ${WARMUP}s warm-up each, $ROUNDS alternating rounds (${SERVERS[*]}, reversed in even rounds); median of the rounds shown"
    echo "- proxies pinned to CPU $SERVER_CPU, one worker/thread, access log to a file (gatehouse's in ${ACCESS_LOG_FORMAT:-text} format), keep-alive to the upstream; upstream nginx (\`return 200 \"hello world\\n\"\`, 1 worker) and wrk share CPU $LOAD_CPU"
    if ((TARGETS > 1)); then echo "- $TARGETS upstream targets (ports of the one upstream nginx), round robin; HAProxy and gatehouse check each target every 2 s"; fi
    echo
    echo "| server | req/s (median) | req/s (min–max) | p50 ms | p99 ms | proxy CPU | CPU µs/request | idle RSS | peak RSS | access-log lines | runs used |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for s in direct "${SERVERS[@]}"; do
        read -r rps mn mx < <(stat_col "$s" 3)
        read -r p50 _ _ < <(stat_col "$s" 4)
        read -r p99 _ _ < <(stat_col "$s" 5)
        read -r cpu _ _ < <(stat_col "$s" 9)
        read -r us _ _ < <(stat_col "$s" 12)
        bad="$(awk -F'\t' -v s="$s" '$2 == s { n += $7 + $8 } END { print n + 0 }' "$RESULTS")"
        if [[ "$s" == direct ]]; then
            printf '| %s | %.0f | – | %.2f | %.2f | – | – | – | – | – | 1/1 |\n' "${LABEL[$s]}" "$rps" "$p50" "$p99"
        else
            flag=""
            ((bad == 0)) || flag=" ⚠ $bad errors"
            printf '| %s%s | %.0f | %.0f–%.0f | %.2f | %.2f | %.0f%% | %.1f | %.1f MB | %.1f MB | %s | %s |\n' \
                "${LABEL[$s]}" "$flag" "$rps" "$mn" "$mx" "$p50" "$p99" "$cpu" "$us" \
                "$(awk -v k="${IDLE_KB[$s]}" 'BEGIN { print k / 1024 }')" \
                "$(awk -v k="${PEAK_KB[$s]}" 'BEGIN { print k / 1024 }')" "${LOG_LINES[$s]}" "$(runs_used "$s")"
        fi
    done
    echo
    if want gatehouse; then
        local peer g_rps g_p99 g_us p_rps p_p99 p_us
        read -r g_rps _ _ < <(stat_col gatehouse 3)
        read -r g_us _ _ < <(stat_col gatehouse 12)
        read -r g_p99 _ _ < <(stat_col gatehouse 5)
        for peer in nginx haproxy policies baseline; do
            want "$peer" || continue
            read -r p_rps _ _ < <(stat_col "$peer" 3)
            read -r p_p99 _ _ < <(stat_col "$peer" 5)
            read -r p_us _ _ < <(stat_col "$peer" 12)
            local r_med r_min r_max q_med q_min q_max q_won q_rounds
            read -r r_med r_min r_max < <(round_ratios "$peer")
            read -r q_med q_min q_max < <(round_ratios "$peer" 5)
            read -r q_won q_rounds < <(p99_rounds "$peer")
            local caveat=""
            [[ " $all_disturbed " != *" $peer "* && " $all_disturbed " != *" gatehouse "* ]] ||
                caveat=" — not comparable: every run of one of them was disturbed"
            local name
            case "$peer" in
            policies) name="gatehouse with rate limit + CORS" ;;
            baseline) name="baseline build" ;;
            *) name="${LABEL[$peer]%% *}" ;;
            esac
            awk -v c="$caveat" -v n="$name" -v gr="$g_rps" -v pr="$p_rps" -v gp="$g_p99" -v pp="$p_p99" \
                -v gu="$g_us" -v pu="$p_us" -v gk="${PEAK_KB[gatehouse]}" -v pk="${PEAK_KB[$peer]}" \
                -v rm="$r_med" -v rl="$r_min" -v rh="$r_max" -v qm="$q_med" -v ql="$q_min" -v qh="$q_max" \
                -v qw="$q_won" -v qn="$q_rounds" 'BEGIN {
                within = (rm == "-") ? "no round ran both" : sprintf("median %.2f×, %.2f–%.2f×", rm, rl, rh)
                p99within = (qm == "-") ? "no round ran both" : sprintf("median %.2f×, %.2f–%.2f×; no higher in %d of %d rounds", qm, ql, qh, qw, qn)
                printf "- gatehouse / %s: **%.2f×** req/s (within a round: %s); p99 %.2f× (within a round: %s), CPU per request %.2f×, peak RSS %.2f× (these: lower is better)%s\n",
                    n, gr / pr, within, gp / pp, p99within, gu / pu, gk / pk, c
            }'
        done
        echo
    fi
    if [[ -n "$QUIET_NOTE" ]] || ((contended > 0)); then
        echo "**Warning: the machine was not quiet.** ${QUIET_NOTE:+${QUIET_NOTE^}. }$contended proxy run(s) had more than $DISTURBED_PCT% of CPU$SERVER_CPU used by something other than the proxy (see \"CPU$SERVER_CPU other\" below); the medians above leave those runs out (\"runs used\")${all_disturbed:+, except for${all_disturbed}, which had no undisturbed run and whose numbers are not comparable}. On a contended core the scheduler does not share time evenly between servers; CPU µs/request is the figure that survives. For a clean table rerun on a quiet machine, or with \`--wait-quiet 600\`, which redoes disturbed runs."
        echo
    fi
    echo "Per round (round 0 is the direct baseline; CPU busy is the whole core, from /proc/stat; \"other\" is CPU$SERVER_CPU time not used by the proxy):"
    echo
    echo "| round | server | req/s | p50 ms | p99 ms | proxy CPU | CPU µs/request | CPU$SERVER_CPU busy | CPU$SERVER_CPU other | CPU$LOAD_CPU busy | non-2xx | socket errors |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ d = ($2 == "direct")
        o = $10 - $9; if (o < 0) o = 0
        printf "| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s%% | %s | %s%% | %s | %s |\n",
        $1, $2, $3, $4, $5, (d ? "–" : $9 "%"), (d ? "–" : $12), $10, (d ? "–" : o "%"), $11, $7, $8 }' "$RESULTS"
    if [[ -s "$PERF_TSV" ]]; then
        echo
        echo "Under \`perf stat\` (one extra ${DURATION}s run each; tracing slows every server, so compare per-request figures, not req/s):"
        echo
        echo "| server | req/s under perf | syscalls/request | CPU µs/request | context switches/request |"
        echo "|---|---:|---:|---:|---:|"
        awk -F'\t' '{ printf "| %s | %.0f | %.2f | %.2f | %.3f |\n", $1, $2, $3, $4, $5 }' "$PERF_TSV"
    fi
    if [[ -n "$PROFILE_TXT" ]]; then
        echo
        echo "gatehouse CPU profile (\`perf record -e cpu-clock\`, one extra ${DURATION}s run; by binary, all symbols ≥ 1.5%, then gatehouse's own top 15):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
    fi
}

mkdir -p "$REPO/bench/results"
OUT="$REPO/bench/results/proxy-$STAMP.md"
report | tee "$OUT"
echo >&2
log "written to ${OUT#"$REPO"/}"
