#!/usr/bin/env bash
# Lookup hit path vs a plain proxied route, one run, same gateway config and the shared
# harness (../shared/bench/proxy-compare.sh): GET /lookups/provinces/01 (served from the
# cache) against GET /json proxied to the harness's static upstream. Prints req/s and
# proxy CPU µs per request for each and the ratios.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
# LIENTHONG_BIN=path skips the build (e.g. to run several scripts on one binary).
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-lookupbench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export EXTRA_CONFIG="
[[lookups]]
name = \"provinces\"
source = { file = \"$HERE/config/data/dvhc-2025.csv\", table = \"provinces\" }
ttl = \"24h\"
auth = { anonymous = true }
"
export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}" GATEWAY_CMD="$HERE/benches/gateway-for-bench.sh"
export GATEWAY_PORT="${GATEWAY_PORT:-18083}" RESULTS_DIR="$WORK/results" LATENCY="${LATENCY:-0}"
mkdir -p "$RESULTS_DIR"
echo "== proxied route /json" >&2
GATEWAY_NAME=proxied TARGETS=proxied GATEWAY_PATH=/json "$SHARED/bench/proxy-compare.sh" | tail -4
echo "== lookup hit /lookups/provinces/01" >&2
GATEWAY_NAME=lookup TARGETS=lookup GATEWAY_PATH=/lookups/provinces/01 "$SHARED/bench/proxy-compare.sh" | tail -4
python3 "$HERE/benches/compare.py" "$RESULTS_DIR" proxied lookup
