#!/usr/bin/env bash
# Static-file benchmark: gatehouse against nginx and Caddy, side by side.
#
# Three files (1.4 KB, 100 KB, 10 MB of random bytes, served as
# application/octet-stream so nothing compresses them) in one docroot. Every server is
# pinned to CPU 0, runs one worker (Caddy: GOMAXPROCS=1) and writes an access log to a
# file; wrk on CPU 1 drives each server in turn, A B C A B C ..., for each file, and
# the script reports the median of the rounds and gatehouse's ratio to each peer.
# See bench/README.md for what is measured and how to read the table.
#
# Usage: bench/static.sh [--rounds 3] [--duration 8] [--connections 50]
#                        [--only nginx,caddy,gatehouse] [--files small,medium,large]
#                        [--warmup 2] [--perf] [--profile] [--keep] [--wait-quiet SECONDS]
# Env:   GATEHOUSE_BIN=path  use this binary instead of `cargo build --release`.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- settings
ROUNDS=3
DURATION=8
CONNECTIONS=50
WARMUP=2
ONLY="nginx,caddy,gatehouse"
FILES_ARG="small,medium,large"
PERF=0
PROFILE=0
KEEP=0
WAIT_QUIET=0 # seconds to wait for other load on the machine to go away
QUIET_PCT=15 # a core busier than this before the runs counts as "not quiet"
DISTURBED_PCT=10 # a run is disturbed when other work took more of the server's core
WRK_TIMEOUT=10 # s; a 10 MB answer over 50 connections can take longer than wrk's 2 s default

SERVER_CPU=0 # every server runs here, alone
LOAD_CPU=1   # wrk

declare -A PORT=([nginx]=18101 [caddy]=18102 [gatehouse]=18103)
declare -A LABEL=(
    [nginx]="nginx (1 worker)"
    [caddy]="Caddy (GOMAXPROCS=1)"
    [gatehouse]="gatehouse (1 worker)"
)
ORDER=(nginx caddy gatehouse) # the A B C of each round

# The files: name, size in bytes, label.
declare -A FILE_NAME=([small]=small.bin [medium]=medium.bin [large]=large.bin)
declare -A FILE_SIZE=([small]=1434 [medium]=102400 [large]=10485760)
declare -A FILE_LABEL=([small]="1.4 KB" [medium]="100 KB" [large]="10 MB")
FILE_ORDER=(small medium large)




INVOCATION="bench/static.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then INVOCATION+=" $arg"; else INVOCATION+=" $(printf '%q' "$arg")"; fi
done

while (($#)); do
    case "$1" in
    --rounds | --duration | --connections | --warmup | --only | --files | --wait-quiet)
        (($# >= 2)) || die "$1 needs a value"
        opt="${1#--}"
        val="$2"
        shift 2
        ;;
    --rounds=* | --duration=* | --connections=* | --warmup=* | --only=* | --files=* | --wait-quiet=*)
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
    files) FILES_ARG="$val" ;;
    wait-quiet) WAIT_QUIET="${val%s}" ;;
    esac
done

int_in_range rounds "$ROUNDS" 1 50
int_in_range duration "$DURATION" 1 600
int_in_range connections "$CONNECTIONS" 1 10000
int_in_range warmup "$WARMUP" 0 60
int_in_range wait-quiet "$WAIT_QUIET" 0 3600

SERVERS=()
IFS=',' read -r -a wanted <<<"$ONLY"
for s in "${ORDER[@]}"; do
    for w in "${wanted[@]}"; do [[ "$w" == "$s" ]] && SERVERS+=("$s") && break; done
done
for w in "${wanted[@]}"; do
    [[ -n "${PORT[$w]:-}" ]] || die "--only: unknown server '$w' (nginx, caddy, gatehouse)"
done
((${#SERVERS[@]})) || die "--only selected no server"

FILES=()
IFS=',' read -r -a wanted <<<"$FILES_ARG"
for f in "${FILE_ORDER[@]}"; do
    for w in "${wanted[@]}"; do [[ "$w" == "$f" ]] && FILES+=("$f") && break; done
done
for w in "${wanted[@]}"; do
    [[ -n "${FILE_NAME[$w]:-}" ]] || die "--files: unknown file '$w' (small, medium, large)"
done
((${#FILES[@]})) || die "--files selected no file"

# ---------------------------------------------------------------- preflight
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

for cmd in wrk curl taskset awk ps cmp; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found (apt-get install -y wrk curl util-linux procps diffutils)"
done
want nginx && { command -v nginx >/dev/null || die "'nginx' not found (apt-get install -y nginx)"; }
want caddy && { command -v caddy >/dev/null || die "'caddy' not found (apt-get install -y caddy)"; }
(($(nproc) >= 2)) || die "needs at least 2 CPUs (servers on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU)"
if ((PERF || PROFILE)); then command -v perf >/dev/null || die "--perf/--profile need 'perf' (apt-get install -y linux-perf)"; fi
if ((PROFILE)) && ! want gatehouse; then die "--profile profiles gatehouse; include it in --only"; fi

for s in "${SERVERS[@]}"; do
    port_busy "${PORT[$s]}" && die "127.0.0.1:${PORT[$s]} is already in use; stop whatever listens there (a system nginx/caddy service?)"
done

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_NEED=$((CONNECTIONS * 2 + 256))
(($(ulimit -n) >= FD_NEED)) || die "open-file limit $(ulimit -n) is below $FD_NEED for $CONNECTIONS connections"

# The source the binary is built from, taken now: the tree may move during the run.
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit yet')"
if [[ -n "$(git -C "$REPO" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then GIT_REV+=" (+ uncommitted changes)"; fi
GATEHOUSE=""
if want gatehouse; then
    if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
        GATEHOUSE="$GATEHOUSE_BIN"
    else
        log "building gatehouse (cargo build --release -p gatehouse)"
        cargo build --release -p gatehouse >&2
        GATEHOUSE="${CARGO_TARGET_DIR:-$REPO/target}/release/gatehouse"
    fi
    [[ -x "$GATEHOUSE" ]] || die "gatehouse binary '$GATEHOUSE' is missing or not executable"
fi

# ---------------------------------------------------------------- processes
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-static-bench.XXXXXX")"
STARTED=() # every server pid this script started (children are added once seen)
RUNNING=() # the wrk run in progress, if any
SIDE=""    # the perf run in progress, if any

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A PIDS # server -> "pid [child pids...]"




# wait_ready NAME PORT : until GET /small.bin answers 200 (at most 10 s)
wait_ready() {
    local name="$1" port="$2" pid="${PIDS[$1]%% *}" i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_output "$name"
            die "$name exited during startup"
        fi
        if curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$port/${FILE_NAME[small]}" 2>/dev/null; then
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
    die "$name did not answer on 127.0.0.1:$port within 10 s"
}

# ---------------------------------------------------------------- docroot and configs
DOCROOT="$TMP/docroot"
mkdir -p "$DOCROOT"
# nginx's worker runs as an unprivileged user when started as root: let it reach the
# docroot (the temp dir itself stays unlistable).
chmod 711 "$TMP"
chmod 755 "$DOCROOT"
for f in "${FILE_ORDER[@]}"; do
    # Random bytes: incompressible, and .bin is application/octet-stream everywhere.
    head -c "${FILE_SIZE[$f]}" /dev/urandom >"$DOCROOT/${FILE_NAME[$f]}"
    chmod 644 "$DOCROOT/${FILE_NAME[$f]}"
done

WORKER_CONNECTIONS=$((CONNECTIONS * 2 + 1024))

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $WORKER_CONNECTIONS; }
http {
    # Debian's defaults for static files: sendfile with TCP_CORK; no open_file_cache.
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    access_log $TMP/nginx-access.log combined;
    keepalive_requests 1000000;
$(nginx_temp_paths "$TMP/nginx")
    server {
        listen 127.0.0.1:${PORT[nginx]};
        root $DOCROOT;
    }
}
EOF

mkdir -p "$TMP/caddy-home"
cat >"$TMP/Caddyfile" <<EOF
{
    admin off
    auto_https off
}

http://127.0.0.1:${PORT[caddy]} {
    bind 127.0.0.1
    root * $DOCROOT
    file_server
    log {
        output file $TMP/caddy-access.log
    }
}
EOF

cat >"$TMP/gatehouse.toml" <<EOF
[server]
http = ["127.0.0.1:${PORT[gatehouse]}"]
workers = 1
data_dir = "$TMP/gatehouse-data"

[log]
level = "warn"
access_log = "$TMP/gatehouse-access.log"

# One site that answers every Host.
[[site]]
default = true

  [[site.route]]
  path = "/"
  static = { dir = "$DOCROOT" }
EOF

if want gatehouse; then
    # Run a private copy: a rebuild during the run must not swap the binary under test
    # (and perf needs the file to resolve symbols).
    cp "$GATEHOUSE" "$TMP/gatehouse"
    GATEHOUSE="$TMP/gatehouse"
    "$GATEHOUSE" check -c "$TMP/gatehouse.toml" >"$TMP/gatehouse-check.out" 2>&1 || {
        cat "$TMP/gatehouse-check.out" >&2
        die "gatehouse check rejected the benchmark config (bench/static.sh writes it; adapt it to docs/config.md)"
    }
fi
if want caddy; then
    HOME="$TMP/caddy-home" caddy validate --config "$TMP/Caddyfile" --adapter caddyfile >"$TMP/caddy-validate.out" 2>&1 || {
        cat "$TMP/caddy-validate.out" >&2
        die "caddy validate rejected the benchmark Caddyfile"
    }
fi

for s in "${SERVERS[@]}"; do
    log "starting $s on 127.0.0.1:${PORT[$s]} (CPU $SERVER_CPU)"
    case "$s" in
    nginx) start nginx "$SERVER_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ;;
    caddy)
        start caddy "$SERVER_CPU" env GOMAXPROCS=1 HOME="$TMP/caddy-home" \
            XDG_DATA_HOME="$TMP/caddy-home/data" XDG_CONFIG_HOME="$TMP/caddy-home/config" \
            caddy run --config "$TMP/Caddyfile" --adapter caddyfile
        ;;
    gatehouse) start gatehouse "$SERVER_CPU" "$GATEHOUSE" serve -c "$TMP/gatehouse.toml" ;;
    esac
    wait_ready "$s" "${PORT[$s]}"
done

# Every server must send each file byte for byte, uncompressed (curl sends no
# Accept-Encoding unless asked to).
declare -A CTYPE # server -> Content-Type it sent
for s in "${SERVERS[@]}"; do
    for f in "${FILES[@]}"; do
        got="$TMP/check-$s-$f"
        code="$(curl -sS -m 30 -o "$got" -D "$got.headers" -w '%{http_code}' "http://127.0.0.1:${PORT[$s]}/${FILE_NAME[$f]}")" ||
            die "curl to $s for ${FILE_NAME[$f]} failed"
        [[ "$code" == 200 ]] || die "$s answered $code for ${FILE_NAME[$f]}"
        cmp -s "$got" "$DOCROOT/${FILE_NAME[$f]}" || die "$s did not send ${FILE_NAME[$f]} byte for byte"
        if grep -qi '^content-encoding:' "$got.headers"; then
            die "$s sent ${FILE_NAME[$f]} with $(grep -i '^content-encoding:' "$got.headers" | tr -d '\r')"
        fi
        CTYPE[$s]="$(awk -F': ' 'tolower($1) == "content-type" { sub(/\r$/, "", $2); print $2 }' "$got.headers")"
        rm -f "$got"
    done
    log "$s sends every file byte for byte, no Content-Encoding (Content-Type: ${CTYPE[$s]})"
done




HZ="$(getconf CLK_TCK)"


# run_wrk SERVER FILE OUTFILE SECONDS
# Runs in the background and is waited for, so a signal reaches the trap at once.
run_wrk() {
    timeout -k 5 $(($4 + WRK_TIMEOUT + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"$4"s --timeout "${WRK_TIMEOUT}s" --latency \
        "http://127.0.0.1:${PORT[$1]}/${FILE_NAME[$2]}" >"$3" 2>&1 </dev/null &
    local job=$!
    RUNNING+=("$job")
    if ! wait "$job"; then
        RUNNING=()
        cat "$3" >&2
        die "wrk against $1 ($2 file) failed"
    fi
    RUNNING=()
}


# round server rps p50 p99 requests non-2xx socket-errors server-CPU% CPU0-busy% CPU1-busy% server-CPU-µs/request file
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

measure() { # ROUND SERVER FILE
    local round="$1" s="$2" f="$3" out="$TMP/wrk-$2-$3-$1.txt"
    local -a pids
    read -r -a pids <<<"${PIDS[$s]}"
    local t0 t1 c0t0 c0i0 c1t0 c1i0 c0t1 c0i1 c1t1 c1i1 ticks0 ticks1 parsed
    read -r c0t0 c0i0 < <(cpu_line "$SERVER_CPU")
    read -r c1t0 c1i0 < <(cpu_line "$LOAD_CPU")
    ticks0="$(cpu_ticks "${pids[@]}")"
    t0="$(date +%s.%N)"
    run_wrk "$s" "$f" "$out" "$DURATION"
    t1="$(date +%s.%N)"
    ticks1="$(cpu_ticks "${pids[@]}")"
    read -r c0t1 c0i1 < <(cpu_line "$SERVER_CPU")
    read -r c1t1 c1i1 < <(cpu_line "$LOAD_CPU")
    parsed="$(parse_wrk "$out")" || {
        cat "$out" >&2
        die "could not parse wrk output for $s ($f file)"
    }
    awk -v r="$round" -v s="$s" -v file="$f" -v p="$parsed" -v hz="$HZ" \
        -v t0="$t0" -v t1="$t1" -v k0="$ticks0" -v k1="$ticks1" \
        -v a0="$c0t0" -v i0="$c0i0" -v a1="$c0t1" -v i1="$c0i1" \
        -v b0="$c1t0" -v j0="$c1i0" -v b1="$c1t1" -v j1="$c1i1" 'BEGIN {
            wall = t1 - t0
            cpu = (k1 - k0) / hz / wall * 100
            busy0 = (a1 > a0) ? 100 * (1 - (i1 - i0) / (a1 - a0)) : 0
            busy1 = (b1 > b0) ? 100 * (1 - (j1 - j0) / (b1 - b0)) : 0
            split(p, f, " ")
            us = f[4] > 0 ? (k1 - k0) / hz / f[4] * 1e6 : 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.2f\t%s\n", r, s, f[1], f[2], f[3], f[4], f[5], f[6], cpu, busy0, busy1, us, file
        }' >>"$RESULTS"
    local line
    line="$(tail -n 1 "$RESULTS")"
    awk -F'\t' -v c0="$SERVER_CPU" -v c1="$LOAD_CPU" '{
        printf "    %-6s %-10s round %s: %8.0f req/s  p50 %.2f ms  p99 %.2f ms  server CPU %s%% (%.1f us/req)  CPU%s/CPU%s busy %s%%/%s%%%s\n",
            $13, $2, $1, $3, $4, $5, $9, $12, c0, c1, $10, $11,
            ($7 + $8 > 0 ? "  ERRORS: " $7 " non-2xx, " $8 " socket" : "") }' <<<"$line" >&2
}

QUIET_NOTE=""
QUIET_DEADLINE=$((SECONDS + WAIT_QUIET)) # one budget for the whole run
if ! wait_quiet; then
    QUIET_NOTE="before the runs the machine was busy with other work"
    log "warning: $QUIET_NOTE; numbers will be noisy (--wait-quiet SECONDS waits for a quiet machine)"
fi

# measure_clean ROUND SERVER FILE : with --wait-quiet, a disturbed run is thrown away
# and redone (twice at most).
measure_clean() {
    local attempt other
    for ((attempt = 0; attempt < 3; attempt++)); do
        ((WAIT_QUIET == 0 || attempt == 0)) || wait_quiet || true
        measure "$1" "$2" "$3"
        ((WAIT_QUIET > 0)) || return 0
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

declare -A PEAK_KB # "server file" -> VmHWM after that file's rounds (cumulative)
for f in "${FILES[@]}"; do
    log "${FILE_LABEL[$f]} file (${FILE_NAME[$f]}, ${FILE_SIZE[$f]} bytes)"
    if ((WARMUP > 0)); then
        log "warm-up, ${WARMUP}s each (not recorded)"
        for s in "${SERVERS[@]}"; do run_wrk "$s" "$f" "$TMP/wrk-$s-$f-warmup.txt" "$WARMUP"; done
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        log "${FILE_LABEL[$f]}: round $round of $ROUNDS"
        for s in "${SERVERS[@]}"; do measure_clean "$round" "$s" "$f"; done
    done
    for s in "${SERVERS[@]}"; do
        read -r -a p <<<"${PIDS[$s]}"
        PEAK_KB["$s $f"]="$(mem_kb VmHWM "${p[@]}")"
    done
done


# Extra, unrecorded runs under perf: syscalls and CPU per request.
PERF_TSV="$TMP/perf.tsv"
: >"$PERF_TSV"
if ((PERF)); then
    log "perf stat runs (${DURATION}s each, not part of the table)"
    for f in "${FILES[@]}"; do
        for s in "${SERVERS[@]}"; do
            window=$((DURATION > 3 ? DURATION - 2 : 1))
            read -r -a p <<<"${PIDS[$s]}"
            ((WAIT_QUIET == 0)) || wait_quiet || true
            side_job perf stat -x, -e raw_syscalls:sys_enter,task-clock,context-switches \
                -p "$(join_comma "${p[@]}")" -o "$TMP/perf-$s-$f.csv" -- sleep "$window"
            run_wrk "$s" "$f" "$TMP/wrk-$s-$f-perf.txt" "$DURATION"
            wait "$SIDE" || log "perf stat failed for $s (see --keep and perf.out)"
            SIDE=""
            rps="$(parse_wrk "$TMP/wrk-$s-$f-perf.txt" | awk '{ print $1 }')"
            awk -F, -v s="$s" -v file="$f" -v rps="$rps" -v w="$window" '
                $3 == "raw_syscalls:sys_enter" { sc = $1 }
                $3 == "task-clock" { tc = $1 }
                $3 == "context-switches" { cs = $1 }
                END {
                    n = rps * w
                    if (n > 0) printf "%s\t%s\t%.0f\t%.2f\t%.2f\t%.3f\n", file, s, rps, sc / n, tc * 1000 / n, cs / n
                }' "$TMP/perf-$s-$f.csv" >>"$PERF_TSV"
        done
    done
fi

PROFILE_TXT=""
if ((PROFILE)); then
    for f in "${FILES[@]}"; do
        log "perf record of gatehouse under load, ${FILE_LABEL[$f]} file (${DURATION}s, not part of the table)"
        window=$((DURATION > 3 ? DURATION - 2 : 1))
        ((WAIT_QUIET == 0)) || wait_quiet || true
        # shellcheck disable=SC2086 # the pid list is split on purpose
        side_job perf record -q -e cpu-clock -F 999 -p "$(join_comma ${PIDS[gatehouse]})" \
            -o "$TMP/perf-gatehouse-$f.data" -- sleep "$window"
        run_wrk gatehouse "$f" "$TMP/wrk-gatehouse-$f-profile.txt" "$DURATION"
        wait "$SIDE" || log "perf record failed (see --keep and perf.out)"
        SIDE=""
        PROFILE_TXT+="--- ${FILE_LABEL[$f]} file: by binary"$'\n'
        PROFILE_TXT+="$(perf report -i "$TMP/perf-gatehouse-$f.data" --stdio --no-children --sort dso 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -n 5 || true)"
        PROFILE_TXT+=$'\n'"--- ${FILE_LABEL[$f]} file: symbols ≥ 1.5% of all samples"$'\n'
        PROFILE_TXT+="$(perf report -i "$TMP/perf-gatehouse-$f.data" --stdio --no-children --fields overhead,dso,sym --percent-limit 1.5 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -n 25 || true)"
        PROFILE_TXT+=$'\n'"--- ${FILE_LABEL[$f]} file: inside the gatehouse binary (share of all samples)"$'\n'
        PROFILE_TXT+="$(perf report -i "$TMP/perf-gatehouse-$f.data" --stdio --no-children --dsos gatehouse --fields overhead,sym 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -n 10 || true)"
        PROFILE_TXT+=$'\n\n'
    done
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
NGINX_V="$(command -v nginx >/dev/null && nginx -v 2>&1 | sed 's/^nginx version: nginx\///' || echo '-')"
CADDY_V="$(command -v caddy >/dev/null && caddy version 2>/dev/null | awk 'NR == 1 { print $1 }' || echo '-')"
WRK_V="$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }' || true)"
GH_V="-"
if want gatehouse; then GH_V="$("$GATEHOUSE" --version 2>/dev/null | head -n 1 || echo '?')"; fi
STAMP="$(date +%Y-%m-%d-%H%M%S)"

# clean_rows SERVER FILE : the rows from undisturbed runs, or all rows if every run
# was disturbed.
clean_rows() {
    awk -F'\t' -v s="$1" -v file="$2" -v d="$DISTURBED_PCT" '
        $2 == s && $13 == file { all[++n] = $0; if ($10 - $9 <= d) clean[++k] = $0 }
        END { if (k) for (i = 1; i <= k; i++) print clean[i]; else for (i = 1; i <= n; i++) print all[i] }' "$RESULTS"
}

# stat_col SERVER FILE COLUMN -> "median min max" over the clean runs
stat_col() {
    clean_rows "$1" "$2" | awk -F'\t' -v c="$3" '{ print $c }' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "- - -"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR]
        }'
}

# runs_used SERVER FILE -> "2/3": runs the medians are taken from / runs made
runs_used() {
    echo "$(clean_rows "$1" "$2" | wc -l)/$(awk -F'\t' -v s="$1" -v file="$2" '$2 == s && $13 == file { n++ } END { print n + 0 }' "$RESULTS")"
}

# undisturbed SERVER FILE : true when the server had at least one undisturbed run
undisturbed() {
    awk -F'\t' -v s="$1" -v file="$2" -v d="$DISTURBED_PCT" '$2 == s && $13 == file && $10 - $9 <= d { ok = 1 } END { exit !ok }' "$RESULTS"
}

# Body bytes per second as "1.94 GB/s" / "812 MB/s".
rate() { awk -v r="$1" -v b="$2" 'BEGIN { x = r * b; if (x >= 1e9) printf "%.2f GB/s", x / 1e9; else printf "%.0f MB/s", x / 1e6 }'; }

report() {
    local s f rps p50 p99 cpu us mn mx bad flag contended
    contended="$(awk -F'\t' -v d="$DISTURBED_PCT" '$10 - $9 > d { n++ } END { print n + 0 }' "$RESULTS")"
    echo "# Static-file benchmark, $STAMP"
    echo
    echo "- command: \`$INVOCATION\`${GATEHOUSE_BIN:+ with \`GATEHOUSE_BIN=$GATEHOUSE_BIN\`}"
    echo "- machine: $NPROC × $CPU_MODEL, Linux $(uname -r)"
    echo "- gatehouse: $GH_V (git: $GIT_REV); nginx $NGINX_V; Caddy $CADDY_V; wrk $WRK_V"
    echo "- load: \`taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s --timeout ${WRK_TIMEOUT}s --latency\`, ${WARMUP}s warm-up each, $ROUNDS alternating rounds (${SERVERS[*]}) per file; median of the rounds shown"
    echo "- servers pinned to CPU $SERVER_CPU, one worker (Caddy: GOMAXPROCS=1), access log to a file; files of random bytes served as application/octet-stream, no Accept-Encoding sent, every answer checked byte for byte with curl first"
    echo
    echo "| file | server | req/s (median) | req/s (min–max) | throughput | p50 ms | p99 ms | server CPU | CPU µs/request | peak RSS | runs used |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for f in "${FILES[@]}"; do
        for s in "${SERVERS[@]}"; do
            read -r rps mn mx < <(stat_col "$s" "$f" 3)
            read -r p50 _ _ < <(stat_col "$s" "$f" 4)
            read -r p99 _ _ < <(stat_col "$s" "$f" 5)
            read -r cpu _ _ < <(stat_col "$s" "$f" 9)
            read -r us _ _ < <(stat_col "$s" "$f" 12)
            bad="$(awk -F'\t' -v s="$s" -v file="$f" '$2 == s && $13 == file { n += $7 + $8 } END { print n + 0 }' "$RESULTS")"
            flag=""
            ((bad == 0)) || flag=" ⚠ $bad errors"
            printf '| %s | %s%s | %.0f | %.0f–%.0f | %s | %.2f | %.2f | %.0f%% | %.1f | %.1f MB | %s |\n' \
                "${FILE_LABEL[$f]}" "${LABEL[$s]}" "$flag" "$rps" "$mn" "$mx" "$(rate "$rps" "${FILE_SIZE[$f]}")" \
                "$p50" "$p99" "$cpu" "$us" \
                "$(awk -v k="${PEAK_KB["$s $f"]}" 'BEGIN { print k / 1024 }')" "$(runs_used "$s" "$f")"
        done
    done
    echo
    printf 'Idle RSS (after start, before any load): '
    for s in "${SERVERS[@]}"; do printf '%s %.1f MB; ' "${s}" "$(awk -v k="${IDLE_KB[$s]}" 'BEGIN { print k / 1024 }')"; done
    printf '\nPeak RSS is VmHWM after that file'"'"'s rounds, so it includes the files before it. Access-log lines at the end: '
    for s in "${SERVERS[@]}"; do printf '%s %s; ' "$s" "${LOG_LINES[$s]}"; done
    printf '\nContent-Type sent: '
    # shellcheck disable=SC2016 # the backquotes are markdown
    for s in "${SERVERS[@]}"; do printf '%s `%s`; ' "$s" "${CTYPE[$s]}"; done
    echo
    echo
    if want gatehouse; then
        local peer g_rps g_p99 g_us p_rps p_p99 p_us target
        for f in "${FILES[@]}"; do
            read -r g_rps _ _ < <(stat_col gatehouse "$f" 3)
            read -r g_us _ _ < <(stat_col gatehouse "$f" 12)
            read -r g_p99 _ _ < <(stat_col gatehouse "$f" 5)
            for peer in nginx caddy; do
                want "$peer" || continue
                read -r p_rps _ _ < <(stat_col "$peer" "$f" 3)
                read -r p_p99 _ _ < <(stat_col "$peer" "$f" 5)
                read -r p_us _ _ < <(stat_col "$peer" "$f" 12)
                local caveat=""
                undisturbed "$peer" "$f" && undisturbed gatehouse "$f" ||
                    caveat=" — not comparable: every run of one of them was disturbed"
                target=""
                if [[ "$peer" == nginx ]]; then
                    if [[ "$f" == small ]]; then target=1.0; else target=0.9; fi
                fi
                awk -v c="$caveat" -v n="${LABEL[$peer]%% *}" -v fl="${FILE_LABEL[$f]}" -v t="$target" \
                    -v gr="$g_rps" -v pr="$p_rps" -v gp="$g_p99" -v pp="$p_p99" \
                    -v gu="$g_us" -v pu="$p_us" -v gk="${PEAK_KB["gatehouse $f"]}" -v pk="${PEAK_KB["$peer $f"]}" 'BEGIN {
                    r = gr / pr
                    tt = (t == "") ? "" : sprintf(" (target ≥ %.1f×: %s)", t, r >= t ? "met" : "**missed**")
                    printf "- %s file, gatehouse / %s: **%.2f×** req/s and throughput%s; p99 %.2f×, CPU per request %.2f×, peak RSS %.2f× (these three: lower is better)%s\n",
                        fl, n, r, tt, gp / pp, gu / pu, gk / pk, c
                }'
            done
        done
        echo
    fi
    if [[ -n "$QUIET_NOTE" ]] || ((contended > 0)); then
        echo "**Warning: the machine was not quiet.** ${QUIET_NOTE:+${QUIET_NOTE^}. }$contended run(s) had more than $DISTURBED_PCT% of CPU$SERVER_CPU used by something other than the server (see \"CPU$SERVER_CPU other\" below); the medians above leave those runs out (\"runs used\") unless a server had no undisturbed run for that file, in which case its numbers and ratios are not comparable. On a contended core the scheduler does not share time evenly between servers; CPU µs/request is the figure that survives. For a clean table rerun on a quiet machine, or with \`--wait-quiet 600\`, which redoes disturbed runs."
        echo
    fi
    echo "Per run (CPU busy is the whole core, from /proc/stat; \"other\" is CPU$SERVER_CPU time not used by the server):"
    echo
    echo "| file | round | server | req/s | p50 ms | p99 ms | server CPU | CPU µs/request | CPU$SERVER_CPU busy | CPU$SERVER_CPU other | CPU$LOAD_CPU busy | non-2xx | socket errors |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for f in "${FILES[@]}"; do
        awk -F'\t' -v file="$f" -v fl="${FILE_LABEL[$f]}" '$13 == file {
            o = $10 - $9; if (o < 0) o = 0
            printf "| %s | %s | %s | %.0f | %.2f | %.2f | %s%% | %s | %s%% | %s%% | %s%% | %s | %s |\n",
            fl, $1, $2, $3, $4, $5, $9, $12, $10, o, $11, $7, $8 }' "$RESULTS"
    done
    if [[ -s "$PERF_TSV" ]]; then
        echo
        echo "Under \`perf stat\` (one extra ${DURATION}s run each; tracing slows every server, so compare per-request figures, not req/s):"
        echo
        echo "| file | server | req/s under perf | syscalls/request | CPU µs/request | context switches/request |"
        echo "|---|---|---:|---:|---:|---:|"
        while IFS=$'\t' read -r f s r sc tc cs; do
            printf '| %s | %s | %.0f | %s | %s | %s |\n' "${FILE_LABEL[$f]}" "$s" "$r" "$sc" "$tc" "$cs"
        done <"$PERF_TSV"
    fi
    if [[ -n "$PROFILE_TXT" ]]; then
        echo
        echo "gatehouse CPU profile (\`perf record -e cpu-clock\`, one extra ${DURATION}s run per file):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
    fi
}

mkdir -p "$REPO/bench/results"
OUT="$REPO/bench/results/static-$STAMP.md"
report | tee "$OUT"
echo >&2
log "written to ${OUT#"$REPO"/}"
