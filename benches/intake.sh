#!/usr/bin/env bash
# Durable intake throughput: 3 KB canonical dossiers from 64 concurrent clients (wrk, POST,
# no Idempotency-Key so each is a new dossier), every 202 durable (WAL, synchronous=FULL,
# group commit; audit off to measure the exchange itself, then on with intake fail-closed),
# in one run with the raw fdatasync rate of the same disk. Prints dossiers/s, p99 and ratios.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
DURATION="${DURATION:-10}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-intake.XXXXXX")"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "== raw fdatasync rate on $(df --output=source "$WORK" | tail -1) (same folder as the databases)"
SYNC=$(python3 - "$WORK/sync.bin" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
n, t0 = 0, time.time()
while time.time() - t0 < 3:
    os.write(fd, b"x" * 512); os.fdatasync(fd); n += 1
print(int(n / (time.time() - t0)))
PY
)
echo "fdatasync/s: $SYNC"

python3 - "$WORK/dossier.json" <<'PY'
import json, sys
# A realistic ~3 KB dossier: applicant, several submitted documents, fees and steps.
d = {"procedure_code": "3.000182.000.00.00.H22", "procedure_name": "Tuyển sinh trung học cơ sở",
     "field_code": "G03-GD10", "field_name": "Giáo dục Trung học",
     "receiving_unit": "000.00.01.H22", "processing_unit_name": "Phòng Giáo dục và Đào tạo",
     "channel": "2", "status": "1", "received_at": "20251126083000", "due_at": "20251203170000",
     "summary": "Hồ sơ tuyển sinh lớp 6 cho học sinh Nguyễn Văn B, trường THCS Lê Lợi",
     "applicant": {"name": "Nguyễn Văn A", "kind": "1", "id_number": "022090000001",
                   "identifiers": [{"kind": "1", "number": "022090000001"}],
                   "email": "nguyenvana@example.vn", "phone": "0912000000"},
     "documents": [{"id": str(100 + i), "name": f"Giay-to-so-{i}-ban-sao-chung-thuc.pdf", "deleted": "False",
                    "url": f"https://motcua.example.gov.vn/download/hoso/2025/11/26/{100 + i}/tep-dinh-kem-{i}.pdf",
                    "digitised": "1", "reuse": "0", "from_national_repository": "0"} for i in range(10)],
     "fees": [{"name": "Lệ phí", "code": "1", "collection_stage": "1", "amount": "0", "kind": "1"}],
     "steps": [{"handler": "Cán bộ một cửa", "at": "20251126083000", "content": "Tiếp nhận hồ sơ", "status": "1"}]}
open(sys.argv[1], "w").write(json.dumps(d, ensure_ascii=False))
PY
echo "dossier body: $(wc -c <"$WORK/dossier.json") bytes"
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$WORK/dossier.json"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.0f %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

run() { # name extra-config
  local PORT; PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$WORK"/exchange.db* "$WORK"/audit.db*
  cat >"$WORK/lt.toml" <<TOML
[server]
worker_threads = 1
[log]
level = "warn"
access_log = false
[admin]
enabled = false
[[listeners]]
name = "public"
listen = "127.0.0.1:$PORT"
max_body_bytes = 65536
[upstreams.dest]
endpoints = ["http://127.0.0.1:9"]
[exchange]
db = "exchange.db"
destinations = ["so"]
auth = { anonymous = true }
[exchange.deliveries]
so = { upstream = "dest", path = "/hoso" }
$2
TOML
  taskset -c 1 "$LIENTHONG_BIN" serve --config "$WORK/lt.toml" >"$WORK/gw-$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
  local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s "$WORK/post.lua" "http://127.0.0.1:$PORT/v1/dossiers" | grep '^RESULT')
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  local stored; stored=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from dossiers').fetchone()[0])" "$WORK/exchange.db")
  read -r _ req dur p50 p99 errs <<<"$out"
  python3 -c "import sys; r=$req/($dur/1e6); print(f'$1: {r:8.0f} dossiers/s  p50 {$p50/1000:.1f} ms  p99 {$p99/1000:.1f} ms  errors {$errs}  stored {$stored} (responses {$req})  vs fdatasync/s: {r/$SYNC:.2f}x')"
}
run exchange-only ""
run with-audit "[audit]
db = \"audit.db\"
key = \"$HERE/config/dev/audit-signing.key.pem\""
