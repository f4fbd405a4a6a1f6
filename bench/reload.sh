#!/usr/bin/env bash
# Reload under load: wrk drives gatehouse over a proxy route while the config is
# reloaded about 20 times through `gatehouse reload` (the admin API), alternating
# between two valid configs (the route's upstream flips between two peers) with
# an invalid config every fifth time, and WebSockets stay open through it all,
# echoing a message every 50 ms.
#
# It counts, rather than times: total requests, non-2xx answers and socket
# errors seen by wrk, reloads that did (and did not) apply as expected, and
# WebSockets that did not survive. Every count but the totals should be 0.
# gatehouse runs on CPU 0; wrk and the peers (bench/reload_peer.py) on CPU 1.
#
# Usage: bench/reload.sh [--duration 20] [--connections 50] [--reloads 20]
#                        [--websockets 20] [--keep]
# Env:   GATEHOUSE_BIN=path  use this binary instead of `cargo build --release`.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=20
CONNECTIONS=50
RELOADS=20
WEBSOCKETS=20
KEEP=0
SERVER_CPU=0
LOAD_CPU=1
PORT_A=18090
PORT_B=18091
PORT_WS=18092
PORT_GH=18093
PORT_ADMIN=18094

while (($#)); do
    case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --reloads) RELOADS="$2"; shift 2 ;;
    --websockets) WEBSOCKETS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
int_in_range duration "$DURATION" 5 600
int_in_range connections "$CONNECTIONS" 1 10000
int_in_range reloads "$RELOADS" 1 1000
int_in_range websockets "$WEBSOCKETS" 0 1000

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
command -v wrk >/dev/null || {
    log "installing wrk"
    apt-get install -y wrk >&2 || die "'wrk' not found and could not be installed (apt-get install -y wrk)"
}
for cmd in wrk python3 taskset awk; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found"
done
(($(nproc) >= 2)) || die "needs at least 2 CPUs"
for p in $PORT_A $PORT_B $PORT_WS $PORT_GH $PORT_ADMIN; do
    port_busy "$p" && die "127.0.0.1:$p is already in use"
done
ulimit -n 65536 2>/dev/null || true

if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
    GATEHOUSE="$GATEHOUSE_BIN"
else
    log "building gatehouse (cargo build --release --bin gatehouse)"
    cargo build --release --bin gatehouse >&2
    GATEHOUSE="${CARGO_TARGET_DIR:-$REPO/target}/release/gatehouse"
fi
[[ -x "$GATEHOUSE" ]] || die "gatehouse binary '$GATEHOUSE' is missing or not executable"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-reload.XXXXXX")"
STARTED=()
RUNNING=()
SIDE=""
declare -A PIDS
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export GATEHOUSE_ADMIN_TOKEN="$TOKEN"
# config N: the proxy route goes to peer a (even N) or b (odd N).
config() {
    local port=$PORT_A
    (($1 % 2)) && port=$PORT_B
    cat <<EOF
[server]
http = ["127.0.0.1:$PORT_GH"]
workers = 1
admin = "127.0.0.1:$PORT_ADMIN"
admin_token = "\${GATEHOUSE_ADMIN_TOKEN}"
data_dir = "$TMP/data"

[log]
access_log = "off"
level = "warn"

[upstream.api]
targets = ["127.0.0.1:$port"]

[upstream.ws]
targets = ["127.0.0.1:$PORT_WS"]

[[site]]
default = true

  [[site.route]]
  path = "/ws"
  upstream = "ws"

  [[site.route]]
  path = "/v"
  respond = { body = "v$1" }

  [[site.route]]
  path = "/"
  upstream = "api"
EOF
}
CONFIG="$TMP/gatehouse.toml"
config 0 >"$CONFIG"

log "starting peers on CPU $LOAD_CPU and gatehouse on CPU $SERVER_CPU"
start peers "$LOAD_CPU" python3 "$REPO/bench/reload_peer.py" serve $PORT_A $PORT_B $PORT_WS
for ((i = 0; i < 100; i++)); do
    grep -q ready "$TMP/peers.out" 2>/dev/null && break
    sleep 0.1
done
grep -q ready "$TMP/peers.out" || { show_output peers; die "the peers did not start"; }
start gatehouse "$SERVER_CPU" "$GATEHOUSE" serve -c "$CONFIG"
for ((i = 0; i < 100; i++)); do
    if curl -fsS -m 1 "http://127.0.0.1:$PORT_GH/" >/dev/null 2>&1; then break; fi
    kill -0 "${PIDS[gatehouse]}" 2>/dev/null || { show_output gatehouse; die "gatehouse exited during startup"; }
    sleep 0.1
done
curl -fsS -m 1 "http://127.0.0.1:$PORT_GH/" >/dev/null || { show_output gatehouse; die "gatehouse did not answer"; }

log "wrk -c$CONNECTIONS for ${DURATION}s, $WEBSOCKETS WebSockets, $RELOADS reloads"
taskset -c "$LOAD_CPU" python3 "$REPO/bench/reload_peer.py" clients "127.0.0.1:$PORT_GH/ws" "$WEBSOCKETS" \
    "$((DURATION - 1))" >"$TMP/ws.out" 2>"$TMP/ws.err" &
WS_PID=$!
RUNNING+=("$WS_PID")
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT_GH/" >"$TMP/wrk.out" 2>&1 &
WRK_PID=$!
RUNNING+=("$WRK_PID")

# Reloads spread over the run, leaving the first and last second quiet.
applied=0 refused=0 wrong=0 gen=1 last_valid=0
pause="$(awk -v d="$DURATION" -v n="$RELOADS" 'BEGIN { printf "%.3f", (d - 2) / n }')"
sleep 1
for ((r = 1; r <= RELOADS; r++)); do
    sleep "$pause"
    if ((r % 5 == 0)); then
        # Invalid: the route names an upstream that does not exist.
        config "$r" | sed 's/upstream = "api"/upstream = "missing"/' >"$CONFIG"
        if "$GATEHOUSE" reload --admin "http://127.0.0.1:$PORT_ADMIN" >>"$TMP/reload.out" 2>&1; then
            wrong=$((wrong + 1))
        else
            refused=$((refused + 1))
        fi
    else
        config "$r" >"$CONFIG"
        if "$GATEHOUSE" reload --admin "http://127.0.0.1:$PORT_ADMIN" >>"$TMP/reload.out" 2>&1; then
            applied=$((applied + 1))
            gen=$((gen + 1))
            last_valid=$r
        else
            wrong=$((wrong + 1))
        fi
    fi
    # The config now served: the last valid one.
    got="$(curl -fsS -m 2 "http://127.0.0.1:$PORT_GH/v" || echo "no answer")"
    [[ "$got" == "v$last_valid" ]] || { wrong=$((wrong + 1)); echo "after reload $r: got '$got', want 'v$last_valid'" >>"$TMP/reload.out"; }
done
wait "$WRK_PID" || true
wait "$WS_PID" || true
RUNNING=()

read -r rps _ _ reqs non2xx sockerr < <(parse_wrk "$TMP/wrk.out") || { cat "$TMP/wrk.out" >&2; die "cannot parse wrk output"; }
read -r _ opened _ dropped _ messages _ mismatched < <(cat "$TMP/ws.out") || die "no WebSocket result: $(cat "$TMP/ws.err")"
[[ -s "$TMP/ws.err" ]] && cat "$TMP/ws.err" >&2

cat <<EOF

Reload under load ($(date -u +%Y-%m-%d), $(nproc) CPUs, rev $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))
  wrk: $CONNECTIONS connections, ${DURATION}s, proxy route
    requests            $reqs ($rps/s)
    non-2xx responses   $non2xx
    socket errors       $sockerr
  reloads: $RELOADS ($applied valid applied, $refused invalid refused, $wrong unexpected outcomes); final generation $gen
  WebSockets: $opened of $WEBSOCKETS opened, $dropped dropped, $messages messages echoed, $mismatched mismatched
EOF
((non2xx == 0 && sockerr == 0 && wrong == 0 && dropped == 0 && mismatched == 0 && opened == WEBSOCKETS)) || {
    echo "FAILED: see $TMP/reload.out" >&2
    KEEP=1
    exit 1
}
