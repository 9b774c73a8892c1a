#!/usr/bin/env bash
# Audit cost: the same plain proxy route with the audit log off and on (fail-open, the
# default), one run of the shared harness each (../shared/bench/proxy-compare.sh), same
# budget (one core for the whole gateway, writer thread included). Prints req/s and proxy
# CPU µs per request for both, the ratios, and the records the writer committed per second.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
# LIENTHONG_BIN=path skips the build (e.g. to run several scripts on one binary).
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-auditbench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}" GATEWAY_CMD="$HERE/benches/gateway-for-bench.sh"
export GATEWAY_PORT="${GATEWAY_PORT:-18083}" RESULTS_DIR="$WORK/results" LATENCY="${LATENCY:-0}"
export ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-5}"
mkdir -p "$RESULTS_DIR"
echo "== audit off" >&2
EXTRA_CONFIG="" GATEWAY_NAME=audit-off TARGETS=audit-off GATEWAY_PATH=/json "$SHARED/bench/proxy-compare.sh" | tail -4
echo "== audit on (fail-open)" >&2
EXTRA_CONFIG="
[audit]
db = \"$WORK/audit.db\"
origin = \"bench/audit\"
key = \"$HERE/config/dev/audit-signing.key.pem\"
" GATEWAY_NAME=audit-on TARGETS=audit-on GATEWAY_PATH=/json "$SHARED/bench/proxy-compare.sh" | tail -4
RECORDS=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from audit_records').fetchone()[0])" "$WORK/audit.db")
python3 - "$RESULTS_DIR" "$RECORDS" <<'PY'
import csv, glob, statistics as st, sys
rows = []
for f in sorted(glob.glob(sys.argv[1] + "/*.tsv")):
    rows += list(csv.DictReader(open(f), delimiter="\t"))
def med(t, k):
    return st.median(float(r[k]) for r in rows if r["target"] == t)
for t in ("audit-off", "audit-on"):
    errs = sum(int(r["errors"]) + int(r["non2xx"]) for r in rows if r["target"] == t)
    print(f"{t:9} req/s {med(t,'rps'):9.0f}  proxy CPU {med(t,'cpu_us_per_req'):6.2f} us/req  errors {errs}")
print(f"audit on / off: req/s {med('audit-on','rps')/med('audit-off','rps'):.3f}x, "
      f"CPU per request {med('audit-on','cpu_us_per_req')/med('audit-off','cpu_us_per_req'):.3f}x")
print(f"records committed: {sys.argv[2]} (every request of the audit-on row, warm-up included)")
PY
