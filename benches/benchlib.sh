# Shell helpers sourced by the benchmark scripts that start the shared harness's upstream
# themselves (audit.sh, proxy-concurrent.sh, pgo.sh). Expects SHARED (the ../shared tree).

# Sets BENCH_WORK and UP_BIN, the harness's upstream, building it where the harness
# builds it (CARGO_TARGET_DIR, else $BENCH_WORK/target) when it is not there yet.
harness_upstream() {
  BENCH_WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/lienthong-bench}"
  local target="${CARGO_TARGET_DIR:-$BENCH_WORK/target}"
  UP_BIN="$target/release/upstream"
  if [ ! -x "$UP_BIN" ]; then
    (cd "$SHARED/bench/upstream" && CARGO_TARGET_DIR="$target" \
      cargo build --release --locked --bin upstream -q)
  fi
}
