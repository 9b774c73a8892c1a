#!/usr/bin/env bash
# Plain-proxy benchmark: lienthong beside nginx and haproxy on the same upstream, in one
# run, with the same budget (one core, one worker), using the shared harness
# ../shared/bench/proxy-compare.sh. Prints req/s, p50/p99, fixed-rate p99 (when oha is
# installed) and proxy CPU µs per request, with ratios against nginx.
#
#   benches/proxy.sh                 # defaults: ROUNDS=3 DURATION=5 BENCH_PATH=/json
#   ROUNDS=5 benches/proxy.sh        # more rounds before trusting a <15% difference
#
# Needs: apt-get install -y wrk nginx haproxy; for fixed-rate latency: cargo install oha --locked
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
[ -x "$SHARED/bench/proxy-compare.sh" ] || { echo "proxy.sh: no harness at $SHARED/bench" >&2; exit 1; }
# LIENTHONG_BIN=path skips the build (e.g. to run several scripts on one binary).
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
export GATEWAY_CMD="$HERE/benches/gateway-for-bench.sh"
export GATEWAY_NAME="${GATEWAY_NAME:-lienthong}"
export GATEWAY_PORT="${GATEWAY_PORT:-18083}"
exec "$SHARED/bench/proxy-compare.sh"
