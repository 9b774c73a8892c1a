#!/usr/bin/env bash
# Shows with strace that the exchange database is fsynced before the 202 receipt is
# written: starts lienthong with an intake channel, traces fsync/fdatasync and socket
# writes of the gateway while one dossier is filed, and prints the syscalls from the
# request to the 202 in order. Exits 1 if no fsync precedes the 202.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${LIENTHONG_BIN:-$HERE/target/debug/lienthong}"
[ -x "$BIN" ] || (cd "$HERE" && cargo build --locked --bin lienthong)
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-fsync.XXXXXX")"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/lt.toml" <<TOML
[log]
level = "warn"
[admin]
enabled = false
[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
[upstreams.dest]
endpoints = ["http://127.0.0.1:9"]
[exchange]
db = "exchange.db"
destinations = ["so"]
auth = { anonymous = true }
[exchange.deliveries]
so = { upstream = "dest", path = "/hoso" }
TOML
"$BIN" serve --config "$WORK/lt.toml" >"$WORK/gw.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
strace -f -tt -e trace=fsync,fdatasync,writev,write,sendto,recvfrom,read -s 40 -p "$PID" -o "$WORK/trace" &
SPID=$!
sleep 0.5
curl -s -o "$WORK/receipt" -w '%{http_code}\n' -H 'Content-Type: application/json' \
  -d '{"procedure_code":"3.000182.000.00.00.H22","receiving_unit":"000.00.01.H22","channel":"2","summary":"fsync proof","status":"1","received_at":"20251126083000","applicant":{"name":"Nguyen Van A","kind":"1","id_number":"022090000001"}}' \
  "http://127.0.0.1:$PORT/v1/dossiers"
sleep 0.3
kill "$SPID"; wait "$SPID" 2>/dev/null || true
python3 - "$WORK/trace" <<'PY'
import sys, re
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if "POST /v1/dossiers" in l)
reply = next(i for i, l in enumerate(lines) if i > start and "HTTP/1.1 202" in l)
window = lines[start:reply + 1]
for l in window:
    if re.search(r"fsync|fdatasync|POST /v1|HTTP/1.1 202", l):
        print(l)
syncs = [l for l in window if re.search(r"\bf(data)?sync\(", l)]
print(f"\n{len(syncs)} fsync/fdatasync call(s) between reading the request and writing the 202")
sys.exit(0 if syncs else 1)
PY
