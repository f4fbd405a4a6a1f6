#!/usr/bin/env bash
# TLS configuration check: testssl.sh against a gatehouse HTTPS listener.
#
# Makes a private CA and a leaf certificate shaped like one from a public CA (ECDSA
# P-256, 90 days, SAN localhost, serverAuth, a CRL distribution point and an OCSP
# URI), serves it from a files-mode site (`tls = { cert, key }`, everything else at
# its default, so HSTS and the security headers are on; `/` answers a small HTML
# page; `[tls] default_sni` names the site for clients without SNI) on 127.0.0.1, runs testssl.sh against https://localhost:PORT/ with the CA
# passed as --add-ca, and summarizes its JSON: findings per severity, then every
# finding of severity LOW or higher (and WARN: a check testssl could not complete).
# Exits non-zero when there is a MEDIUM, HIGH or CRITICAL finding, or when the scan
# did not complete.
#
# The certificate matters: the internal CA's 7-day leaves carry no revocation URIs,
# which testssl reports as HIGH by itself; this run is about gatehouse's TLS setup.
#
# Usage: bench/testssl.sh [--port 18451] [--keep]
# Env:   GATEHOUSE_BIN=path  use this binary instead of `cargo build --release`.
# Needs: testssl (apt-get install -y testssl.sh), openssl, python3; `localhost` is
#        only used as the TLS server name, the scan connects to 127.0.0.1.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=18451
KEEP=0
STARTED=()
RUNNING=()
SIDE=""

while (($#)); do
    case "$1" in
    --port) PORT="$2" && shift 2 ;;
    --keep) KEEP=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
int_in_range port "$PORT" 1024 65535
command -v testssl >/dev/null || die "testssl is missing (Debian/Ubuntu: apt-get install -y testssl.sh)"
for tool in openssl python3 timeout; do command -v "$tool" >/dev/null || die "$tool is missing"; done
port_busy "$PORT" && die "127.0.0.1:$PORT is in use (--port to pick another)"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit yet')"
if [[ -n "$(git -C "$REPO" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then GIT_REV+=" (+ uncommitted changes)"; fi
if [[ -z "${GATEHOUSE_BIN:-}" ]]; then
    log "building gatehouse (cargo build --release -p gatehouse)"
    cargo build --release -p gatehouse --manifest-path "$REPO/Cargo.toml" >&2
    GATEHOUSE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/gatehouse"
fi
[[ -x "$GATEHOUSE_BIN" ]] || die "gatehouse binary '$GATEHOUSE_BIN' is missing or not executable"
GATEHOUSE_VERSION="$("$GATEHOUSE_BIN" --version 2>/dev/null || echo gatehouse)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-testssl.XXXXXX")"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- certificates
log "making a private CA and a 90-day ECDSA P-256 leaf for localhost"
cat >"$TMP/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
O = gatehouse testssl
CN = gatehouse testssl CA
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
crlDistributionPoints = URI:http://ca.invalid/gatehouse-testssl.crl
authorityInfoAccess = OCSP;URI:http://ca.invalid/ocsp, caIssuers;URI:http://ca.invalid/ca.der
EOF
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec_key "$TMP/ca.key"
openssl req -x509 -new -config "$TMP/openssl.cnf" -key "$TMP/ca.key" -sha256 -days 365 \
    -extensions ca_ext -set_serial "0x$(openssl rand -hex 16)" -out "$TMP/ca.pem"
ec_key "$TMP/leaf.key"
openssl req -new -config "$TMP/openssl.cnf" -key "$TMP/leaf.key" -subj "/CN=localhost" -out "$TMP/leaf.csr"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -sha256 -days 90 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$TMP/openssl.cnf" -extensions leaf_ext \
    -out "$TMP/leaf.pem" 2>/dev/null
cat "$TMP/leaf.pem" "$TMP/ca.pem" >"$TMP/chain.pem"
openssl verify -CAfile "$TMP/ca.pem" "$TMP/leaf.pem" >/dev/null || die "the leaf does not verify against the CA"

# ------------------------------------------------------------------ gatehouse
# An HTML answer at "/", like a site's front page: gatehouse adds its default security
# headers to HTML and to static files, and testssl rates a "/" without any as MEDIUM.
cat >"$TMP/gatehouse.toml" <<EOF
[server]
http = []
https = ["127.0.0.1:$PORT"]
data_dir = "$TMP/data"
[log]
level = "warn"
access_log = "$TMP/access.log"
# Clients without SNI (some of testssl's openssl probes) get this site's certificate.
[tls]
default_sni = "localhost"
[[site]]
hosts = ["localhost"]
tls = { cert = "$TMP/chain.pem", key = "$TMP/leaf.key" }
route = [{ path = "/", respond = { content_type = "text/html; charset=utf-8", body = "<!doctype html><title>ok</title><p>ok</p>\n" } }]
EOF
"$GATEHOUSE_BIN" check -c "$TMP/gatehouse.toml" >"$TMP/check.out" 2>&1 || {
    cat "$TMP/check.out" >&2
    die "gatehouse check refused the config"
}

log "starting $GATEHOUSE_VERSION ($GIT_REV) on 127.0.0.1:$PORT"
"$GATEHOUSE_BIN" serve -c "$TMP/gatehouse.toml" >"$TMP/gatehouse.out" 2>&1 </dev/null &
GATEHOUSE_PID=$!
STARTED+=("$GATEHOUSE_PID")
for ((i = 0; i < 100; i++)); do
    port_busy "$PORT" && break
    kill -0 "$GATEHOUSE_PID" 2>/dev/null || break
    sleep 0.1
done
port_busy "$PORT" || {
    show_output gatehouse
    die "gatehouse did not listen on 127.0.0.1:$PORT"
}

# -------------------------------------------------------------------- testssl
TESTSSL_VERSION="$(testssl --version 2>/dev/null | awk '$1 == "testssl" && $2 ~ /^[0-9]/ && !v { v = $2 } END { print v }')"
JSON="$TMP/testssl.json"
log "running testssl ${TESTSSL_VERSION:-?} (about a minute)"
# --ip: connect to the listener's address whatever else `localhost` resolves to;
# the server name sent (SNI, Host) stays `localhost`.
status=0
timeout 1800 testssl --quiet --color 0 --warnings batch --ip 127.0.0.1 \
    --add-ca "$TMP/ca.pem" --jsonfile "$JSON" "https://localhost:$PORT/" \
    </dev/null >"$TMP/testssl.txt" 2>&1 || status=$?
log "testssl exited with $status; its output is $TMP/testssl.txt (--keep keeps it)"

# testssl asks about RFC 5746 without SNI, which gatehouse refuses (a WARN in its
# report); the same question with SNI:
RENEGO="$(openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -tls1_2 \
    -CAfile "$TMP/ca.pem" </dev/null 2>/dev/null | grep -a -m1 '^Secure Renegotiation' || true)"

alive=1
kill -0 "$GATEHOUSE_PID" 2>/dev/null || alive=0
kill -TERM "$GATEHOUSE_PID" 2>/dev/null || true
wait "$GATEHOUSE_PID" 2>/dev/null || true
STARTED=()
if ((!alive)); then
    show_output gatehouse
    die "gatehouse exited during the scan"
fi
# 242..255 are testssl's own errors (bad option, no connection, ...); 124 is timeout's.
if ((status >= 124)) || [[ ! -s "$JSON" ]]; then
    tail -n 30 "$TMP/testssl.txt" >&2
    die "testssl failed (exit $status)"
fi

# -------------------------------------------------------------------- summary
echo
echo "testssl ${TESTSSL_VERSION:-?} against https://localhost:$PORT/, $GATEHOUSE_VERSION ($GIT_REV), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "RFC 5746 asked with SNI over TLS 1.2 (openssl s_client): ${RENEGO:-no answer}"
python3 - "$JSON" <<'EOF'
import json
import sys

findings = json.load(open(sys.argv[1]))
order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"]
counts = {}
for f in findings:
    counts[f.get("severity", "?")] = counts.get(f.get("severity", "?"), 0) + 1
known = [s for s in order if s in counts] + sorted(s for s in counts if s not in order)
print("findings:", ", ".join(f"{counts[s]} {s}" for s in known))
print("(none MEDIUM or higher)" if not any(counts.get(s) for s in ("CRITICAL", "HIGH", "MEDIUM"))
      else "MEDIUM OR HIGHER FINDINGS PRESENT")

shown = [f for f in findings if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "FATAL")]
shown.sort(key=lambda f: order.index(f["severity"]) if f["severity"] in order else -1)
if shown:
    print()
    width = max(len(f["id"]) for f in shown)
    for f in shown:
        print(f"  {f['severity']:<8} {f['id']:<{width}}  {f.get('finding', '')}")

bad = sum(counts.get(s, 0) for s in ("CRITICAL", "HIGH", "MEDIUM", "FATAL"))
# A scan that could not reach the server has next to no findings: not a pass.
ids = {f["id"] for f in findings}
missing = [i for i in ("TLS1_2", "TLS1_3", "cipher_order", "cert_chain_of_trust", "heartbleed") if i not in ids]
if not any(i.startswith("clientsimulation-") for i in ids):
    missing.append("clientsimulation-*")
if missing:
    print("the scan looks incomplete, no result for:", " ".join(missing), file=sys.stderr)
    bad += 1
sys.exit(1 if bad else 0)
EOF
