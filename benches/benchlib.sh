# Shell helpers sourced by the benchmark scripts that start the shared harness's upstream
# themselves (audit.sh, proxy-concurrent.sh, pgo.sh) or build the bare hyper proxy
# (hyper-floor.sh, proxy-concurrent.sh). Expects SHARED (the ../shared tree) and HERE
# (lienthong's tree).

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

# Sets FLOOR_BIN, the bare hyper proxy of benches/hyper-floor, built against lienthong's
# lockfile (so its hyper, tokio and allocator are the versions lienthong runs) in
# FLOOR_TARGET (default $TMPDIR/lienthong-bench/hyper-floor). The lockfile's copy is
# removed again whether or not the build succeeds.
build_hyper_floor() {
  FLOOR_TARGET="${FLOOR_TARGET:-${TMPDIR:-/tmp}/lienthong-bench/hyper-floor}"
  (
    trap 'rm -f "$HERE/benches/hyper-floor/Cargo.lock"' EXIT
    cp "$HERE/Cargo.lock" "$HERE/benches/hyper-floor/Cargo.lock"
    cd "$HERE/benches/hyper-floor" && CARGO_TARGET_DIR="$FLOOR_TARGET" cargo build --release -q
  )
  FLOOR_BIN="$FLOOR_TARGET/release/hyper-floor"
}
