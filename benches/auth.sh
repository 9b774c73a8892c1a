#!/usr/bin/env bash
# Authentication cost: the same proxy route with and without ES256 bearer-token
# authentication, a repeated token (so the verified-token cache answers), measured in one
# run with the shared harness (../shared/bench/proxy-compare.sh): proxy CPU µs per request
# and req/s for each, and the ratio auth / no-auth. Then the first-use (uncached) cost per
# algorithm from `cargo bench --bench jwt`.
#
#   benches/auth.sh            (ROUNDS, DURATION as for the harness)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
# LIENTHONG_BIN=path skips the build (e.g. to run several scripts on one binary).
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-authbench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/es256.key.pem" 2>/dev/null
openssl pkey -in "$WORK/es256.key.pem" -pubout -out "$WORK/es256.pub.pem"
export EXTRA_CONFIG="
[[auth.issuers]]
name = \"bench\"
iss = \"bench-idp\"
audiences = [\"lienthong\"]
algorithms = [\"ES256\"]
public_key = \"$WORK/es256.pub.pem\"
dev_signing_key = \"$WORK/es256.key.pem\"
max_lifetime = \"1h\"
[[routes]]
name = \"authed\"
path_prefix = \"/authed\"
strip_prefix = true
upstream = \"bench\"
auth = { agencies = [\"*.H22\"] }
"
# Mint the token with the same config the gateway will run.
cat >"$WORK/mint.toml" <<TOML
[[listeners]]
listen = "127.0.0.1:0"
[upstreams.bench]
endpoints = ["http://127.0.0.1:1"]
[[routes]]
upstream = "bench"
auth = { anonymous = true }
$EXTRA_CONFIG
TOML
TOKEN="$("$LIENTHONG_BIN" token --config "$WORK/mint.toml" --ttl 50m)"
export HEADER="Authorization: Bearer $TOKEN"
export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}" GATEWAY_CMD="$HERE/benches/gateway-for-bench.sh"
export GATEWAY_PORT="${GATEWAY_PORT:-18083}" RESULTS_DIR="$WORK/results" LATENCY="${LATENCY:-0}"
mkdir -p "$RESULTS_DIR"
echo "== plain route (anonymous), same Authorization header sent" >&2
GATEWAY_NAME=no-auth TARGETS=no-auth GATEWAY_PATH=/json "$SHARED/bench/proxy-compare.sh" | tail -4
echo "== ES256-protected route, repeated token" >&2
GATEWAY_NAME=es256 TARGETS=es256 GATEWAY_PATH=/authed/json "$SHARED/bench/proxy-compare.sh" | tail -4
python3 "$HERE/benches/compare.py" "$RESULTS_DIR" no-auth es256
echo "== first-use (uncached) verification cost per algorithm" >&2
(cd "$HERE" && cargo bench --locked --bench jwt 2>/dev/null)
