#!/usr/bin/env bash
# Audit cost: the same plain proxy route with the audit log off and on (fail-open, the
# default), through the shared harness (../shared/bench/proxy-compare.sh) with the same
# budget (one core for the whole gateway, writer thread included). The two alternate,
# off/on, for ROUNDS pairs of one harness round each, so drift on a shared machine hits
# both alike; medians over the rounds. Prints req/s and proxy CPU µs per request for both,
# the ratios, and how many records the writer committed.
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
AUDIT_CONFIG="
[audit]
db = \"$WORK/audit.db\"
origin = \"bench/audit\"
key = \"$HERE/config/dev/audit-signing.key.pem\"
"
# AA=1: an A/A calibration. The "on" rounds run without the audit log too, so the
# spread of their ratios is this machine's noise floor for the comparison.
ON_CONFIG="$AUDIT_CONFIG"
[ "${AA:-0}" = 1 ] && ON_CONFIG=""
PAIRS="$ROUNDS"
for i in $(seq "$PAIRS"); do
  echo "== pair $i/$PAIRS: audit off" >&2
  ROUNDS=1 EXTRA_CONFIG="" GATEWAY_NAME=audit-off TARGETS=audit-off GATEWAY_PATH=/json \
    "$SHARED/bench/proxy-compare.sh" 2>&1 | grep ' round ' | tee -a "$WORK/rounds" || true
  echo "== pair $i/$PAIRS: audit on (fail-open)$([ "${AA:-0}" = 1 ] && echo ', A/A: audit off again')" >&2
  ROUNDS=1 EXTRA_CONFIG="$ON_CONFIG" GATEWAY_NAME=audit-on TARGETS=audit-on GATEWAY_PATH=/json \
    "$SHARED/bench/proxy-compare.sh" 2>&1 | grep ' round ' | tee -a "$WORK/rounds" || true
done
# Ratios of each pair, in order: how far single pairs scatter around the medians.
awk '{ for (i = 1; i < NF; i++) { if ($i == "req/s") r = $(i - 1); if ($(i + 1) == "us/req") c = $i }
       if ($3 == "audit-off") { r0 = r; c0 = c } else if (c0 > 0) { n++; rr[n] = r / r0; cr[n] = c / c0
         printf "pair %d: req/s %.2fx, CPU/req %.2fx\n", n, rr[n], cr[n] } }
     function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
       return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
     END { if (n) printf "median of the pair ratios: req/s %.3fx, CPU/req %.3fx\n", med(rr, n), med(cr, n) }' "$WORK/rounds"
python3 "$HERE/benches/compare.py" "$RESULTS_DIR" audit-off audit-on
if [ "${AA:-0}" = 1 ]; then
  echo "A/A calibration: both rows ran without the audit log"
else
  RECORDS=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select coalesce(sum(count),0) from audit_segments').fetchone()[0])" "$WORK/audit.db")
  echo "records committed: $RECORDS (every request of the audit-on row, warm-up included)"
fi
