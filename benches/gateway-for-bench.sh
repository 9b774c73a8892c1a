#!/usr/bin/env bash
# Starts lienthong as the "gateway" row of ../shared/bench/proxy-compare.sh: a plain
# proxy route to the harness's upstream, on $GATEWAY_PORT, with the same budget as
# nginx and haproxy there (one worker thread, pinned to one core by the harness) and,
# like them, no access log. Runs in the foreground (exec keeps the pid).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${BENCH_RUNDIR:?run me from proxy-compare.sh}/lienthong"
mkdir -p "$DIR"
cat >"$DIR/lienthong.toml" <<TOML
[server]
worker_threads = ${PROXY_WORKERS:-1}
[log]
level = "warn"
access_log = false
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "bench"
listen = "127.0.0.1:${GATEWAY_PORT:?}"
max_connections = 4096
[upstreams.bench]
endpoints = ["http://${UPSTREAM_ADDR:?}"]
max_idle_per_endpoint = 256
${EXTRA_UPSTREAM:-}
[[routes]]
name = "plain"
path_prefix = "/"
upstream = "bench"
auth = { anonymous = true }
${EXTRA_ROUTE:-}
${EXTRA_CONFIG:-}
TOML
exec "${LIENTHONG_BIN:-$HERE/target/release/lienthong}" serve --config "$DIR/lienthong.toml"
