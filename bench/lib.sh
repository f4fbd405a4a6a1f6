#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (proxy.sh, static.sh). Sourced, not run.
# They read the calling script's globals (TMP, SERVERS, PIDS, ...) at call time.

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

log() { echo "==> $*" >&2; }

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
