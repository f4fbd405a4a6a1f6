#!/usr/bin/env bash
# Helpers shared by the scripts in bench/ (proxy.sh, static.sh, tls.sh, ...). Sourced, not run.
# They read and set the calling script's globals (TMP, SERVERS, PIDS, SERVER_CPU,
# LOAD_CPU, ...) at call time.
# shellcheck disable=SC2034  # PIDS and the like are the callers' globals

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

log() { echo "==> $*" >&2; }

# nginx_temp_paths DIR: the *_temp_path lines of an nginx http block, under DIR.
nginx_temp_paths() {
    local d
    for d in client_body proxy fastcgi uwsgi scgi; do printf '    %s_temp_path %s/%s;\n' "$d" "$1" "$d"; done
}

# gatehouse_proxy_config PORT ACCESS_LOG DATA_DIR TARGET_PORT... -> the gatehouse
# config the proxy benchmarks use: one worker, an access log (text, or the format
# in $ACCESS_LOG_FORMAT), one route to an upstream of the given ports
# (round-robin, health checks every 2 s when there is more than one),
# connections never recycled (as nginx's keepalive_requests).
gatehouse_proxy_config() {
    local port="$1" access_log="$2" data_dir="$3"
    shift 3
    cat <<EOF
[server]
http = ["127.0.0.1:$port"]
workers = 1
data_dir = "$data_dir"

[log]
level = "warn"
access_log = "$access_log"
access_log_format = "${ACCESS_LOG_FORMAT:-text}"

# One site that answers every Host.
[[site]]
default = true

  [[site.route]]
  path = "/"
  upstream = "backend"

[limits]
# As nginx's keepalive_requests: wrk's connections are never recycled.
keepalive_requests = 1000000

[upstream.backend]
targets = [$(for p in "$@"; do printf '"127.0.0.1:%d", ' "$p"; done)]
$( (($# > 1)) && echo 'health = { path = "/", interval = "2s" }')
EOF
}

int_in_range() { # name value min max
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (($2 < $3 || $2 > $4)); then
        die "--$1 must be an integer in $3..$4, got '$2'"
    fi
}

want() { [[ " ${SERVERS[*]} " == *" $1 "* ]]; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -s ' \n' ' ' || true; }

show_output() {
    local f
    for f in "$TMP/$1.out" "$TMP/$1.err"; do
        [[ -s "$f" ]] || continue
        echo "--- ${f#"$TMP"/}:" >&2
        tail -n 30 "$f" >&2
    done
}

# ---------------------------------------------------------------- measuring
# Sum of VmRSS / VmHWM (kB) over a server's processes.
mem_kb() { # FIELD PIDS...
    local field="$1" total=0 pid v
    shift
    for pid in "$@"; do
        v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# utime+stime ticks summed over processes (all threads included).
cpu_ticks() {
    local total=0 pid v
    for pid in "$@"; do
        v="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# "total idle" jiffies of one CPU from /proc/stat.
cpu_line() { awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6 }' /proc/stat; }

# Parse one wrk output: requests/s, p50 ms, p99 ms, requests, non-2xx, socket errors.
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/) return v * 60000
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { gsub(/,/, ""); errs = $4 + $6 + $8 + $10 }
        END {
            if (rps == "") exit 1
            printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, bad + 0, errs + 0
        }' "$1"
}

# side_job CMD... : start CMD one second into the next wrk run (perf attaches then)
side_job() {
    (
        sleep 1
        exec "$@"
    ) >>"$TMP/perf.out" 2>&1 &
    SIDE=$!
}

join_comma() {
    local IFS=,
    echo "$*"
}

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

cleanup() {
    local status=$? pid alive i
    trap - EXIT INT TERM
    for pid in "${RUNNING[@]}" $SIDE; do kill -TERM "$pid" 2>/dev/null || true; done
    ((${#STARTED[@]})) && {
        for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for ((i = 0; i < 50; i++)); do # up to 5 s for a graceful stop
            alive=0
            for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    }
    if ((KEEP)); then
        echo "$(basename "$0"): kept configs, logs and raw tool output in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}

# start NAME CPU CMD... : run CMD pinned to CPU, stdout+stderr to $TMP/NAME.out
start() {
    local name="$1" cpu="$2"
    shift 2
    taskset -c "$cpu" "$@" >"$TMP/$name.out" 2>&1 </dev/null &
    local pid=$! # taskset (and env, for Caddy) exec the command: this is the server's own pid
    STARTED+=("$pid")
    PIDS[$name]="$pid"
}

# Other work on the two cores (a build, a test run) skews everything; say so.
busy_now() { # -> "busy% of SERVER_CPU" "busy% of LOAD_CPU" over one second
    local a0 i0 b0 j0 a1 i1 b1 j1
    read -r a0 i0 < <(cpu_line "$SERVER_CPU")
    read -r b0 j0 < <(cpu_line "$LOAD_CPU")
    sleep 1
    read -r a1 i1 < <(cpu_line "$SERVER_CPU")
    read -r b1 j1 < <(cpu_line "$LOAD_CPU")
    awk -v a0="$a0" -v i0="$i0" -v a1="$a1" -v i1="$i1" -v b0="$b0" -v j0="$j0" -v b1="$b1" -v j1="$j1" 'BEGIN {
        printf "%.0f %.0f\n", (a1 > a0) ? 100 * (1 - (i1 - i0) / (a1 - a0)) : 0, (b1 > b0) ? 100 * (1 - (j1 - j0) / (b1 - b0)) : 0 }'
}

# wait_quiet : wait (within the budget) until neither core is busy with other work
wait_quiet() {
    local busy0 busy1
    while :; do
        read -r busy0 busy1 < <(busy_now)
        ((busy0 <= QUIET_PCT && busy1 <= QUIET_PCT)) && return 0
        ((SECONDS < QUIET_DEADLINE)) || return 1
        log "machine busy (CPU$SERVER_CPU ${busy0}%, CPU$LOAD_CPU ${busy1}%), waiting up to $((QUIET_DEADLINE - SECONDS)) s more"
        sleep 4
    done
}
