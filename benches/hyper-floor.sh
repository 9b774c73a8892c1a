#!/usr/bin/env bash
# The floor under benches/proxy.sh: a bare hyper reverse proxy (benches/hyper-floor: the
# same hyper, tokio and allocator as lienthong, and nothing else) beside nginx, through
# the shared harness with the same budget (one core, one worker). lienthong's distance
# from nginx is this floor plus its own stages; run both scripts to see the split.
#
#   benches/hyper-floor.sh            # ROUNDS=3 DURATION=5, as proxy.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
[ -x "$SHARED/bench/proxy-compare.sh" ] || { echo "hyper-floor.sh: no harness at $SHARED/bench" >&2; exit 1; }
. "$HERE/benches/benchlib.sh"
build_hyper_floor
export GATEWAY_CMD="$FLOOR_BIN 127.0.0.1:\$GATEWAY_PORT \$UPSTREAM_ADDR"
export GATEWAY_NAME="${GATEWAY_NAME:-hyper-floor}" GATEWAY_PORT="${GATEWAY_PORT:-18083}"
"$SHARED/bench/proxy-compare.sh"
