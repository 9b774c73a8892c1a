#!/usr/bin/env bash
# Profile-guided optimisation: what a PGO build of lienthong gains on the plain proxy route,
# measured against the ordinary release build in the same run.
#
#   1. builds lienthong instrumented (rustc -Cprofile-generate), in its own target dir;
#   2. trains it: the harness's upstream and wrk, TRAIN seconds on the plain proxy route
#      with the audit log off, then as long with it on (the two request paths the proxy
#      benchmarks measure); the profile is written when the gateway drains on SIGTERM;
#   3. merges the profile (llvm-profdata) and builds lienthong with it (-Cprofile-use);
#   4. loads the ordinary and the PGO binary (audit off) on the proxy core, CONCURRENT=1
#      (default: both in the same seconds, each in a session of its own, so the kernel's
#      autogroups give each half of the core) or one after the other in alternating slices
#      (CONCURRENT=0), and prints every slice, the medians of the PGO / ordinary ratios
#      with a distribution-free 95% confidence interval, and where the PGO binary is:
#      `LIENTHONG_BIN=<it> benches/proxy.sh` compares it with nginx.
#
# Only the trained paths are guided: translation, JWT checks, intake and the rest get no
# profile, and LLVM may optimise them for size. This script measures the proxy route only.
#
#   benches/pgo.sh                      # TRAIN=10 SLICES=16 SLICE=3 CONCURRENT=1
#
# Needs: apt-get install -y wrk llvm-19 (llvm-profdata; LLVM_PROFDATA=path picks another:
# its major version may be older than rustc's LLVM as long as it reads the raw profiles,
# which Debian's llvm-19 does for rustc 1.95's LLVM 22).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
[ -d "$SHARED/bench/upstream" ] || { echo "pgo.sh: no harness at $SHARED/bench" >&2; exit 1; }
command -v wrk >/dev/null || { echo "pgo.sh: needs wrk (apt-get install -y wrk)" >&2; exit 1; }
PROFDATA="${LLVM_PROFDATA:-$(command -v llvm-profdata-19 || command -v llvm-profdata || true)}"
[ -n "$PROFDATA" ] || { echo "pgo.sh: needs llvm-profdata (apt-get install -y llvm-19)" >&2; exit 1; }
HOST="$(rustc -vV | sed -n 's/^host: //p')"
# The harness's upstream, built where the harness builds it; sets BENCH_WORK too.
. "$HERE/benches/benchlib.sh"
harness_upstream
PGO_TARGET="${PGO_TARGET:-$BENCH_WORK/pgo}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-pgo.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$HERE"
cargo build --release --locked --bin lienthong
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
# A fixed profile directory keeps RUSTFLAGS, and so this build, the same from run to run.
rm -rf "$PGO_TARGET/raw"
RUSTFLAGS="-Cprofile-generate=$PGO_TARGET/raw" \
  cargo build --release --locked --bin lienthong --target "$HOST" --target-dir "$PGO_TARGET/gen"
export HERE WORK UP_BIN PGO_TARGET GEN_BIN="$PGO_TARGET/gen/$HOST/release/lienthong"
python3 - <<'PY'
import os, subprocess, sys
env = os.environ
HERE, WORK = env["HERE"], env["WORK"]
sys.path.insert(0, f"{HERE}/benches")
from benchlib import Rig, wrk_result
TRAIN = env.get("TRAIN", "10")
UP, PORT = 18080, 18083
rig = Rig("pgo.sh", WORK, env)
rig.need_free(UP, PORT)
try:
    rig.start_upstream(env["UP_BIN"], UP)
    for audit in (False, True):
        d = f"{WORK}/train-{'on' if audit else 'off'}"
        os.makedirs(d)
        extra = (f'[audit]\ndb = "{d}/audit.db"\norigin = "bench/pgo"\n'
                 f'key = "{HERE}/config/dev/audit-signing.key.pem"\n') if audit else ""
        e = dict(env, BENCH_RUNDIR=d, GATEWAY_PORT=str(PORT), PROXY_WORKERS="1",
                 UPSTREAM_ADDR=f"127.0.0.1:{UP}", EXTRA_CONFIG=extra,
                 LIENTHONG_BIN=env["GEN_BIN"], LLVM_PROFILE_FILE=f"{env['PGO_TARGET']}/raw/lt-%p.profraw")
        log = open(f"{d}/gateway.log", "w")
        p = subprocess.Popen(["taskset", "-c", rig.proxy_cpus, f"{HERE}/benches/gateway-for-bench.sh"],
                             env=e, stdout=log, stderr=log)
        rig.procs.append(p)
        rig.wait_up(PORT)
        out = subprocess.run(["taskset", "-c", rig.load_cpus, "wrk", "-t1", "-c64", f"-d{TRAIN}s",
                              f"http://127.0.0.1:{PORT}/json"], capture_output=True, text=True).stdout
        n, rps, errs = wrk_result(out)
        print(f"training, audit {'on' if audit else 'off'}: {n} requests ({rps:.0f} req/s), errors {errs}")
        p.terminate()  # SIGTERM: the gateway drains and exits, and the profile is written
        p.wait(timeout=30)
        rig.procs.remove(p)
        if p.returncode != 0:
            sys.exit(f"pgo.sh: the instrumented gateway exited with {p.returncode} (log: {d}/gateway.log)")
finally:
    rig.stop()
PY
"$PROFDATA" merge -o "$WORK/merged.profdata" "$PGO_TARGET"/raw/*.profraw
# Named by its digest: cargo rebuilds when RUSTFLAGS change, not when a file they name does.
SUM="$(sha256sum "$WORK/merged.profdata" | cut -c1-16)"
mkdir -p "$PGO_TARGET"
cp "$WORK/merged.profdata" "$PGO_TARGET/lienthong-$SUM.profdata"
RUSTFLAGS="-Cprofile-use=$PGO_TARGET/lienthong-$SUM.profdata" \
  cargo build --release --locked --bin lienthong --target "$HOST" --target-dir "$PGO_TARGET/use"
export PGO_BIN="$PGO_TARGET/use/$HOST/release/lienthong" BASE_BIN="$HERE/target/release/lienthong"
python3 - <<'PY'
import os, subprocess, sys
env = os.environ
HERE, WORK = env["HERE"], env["WORK"]
sys.path.insert(0, f"{HERE}/benches")
from benchlib import Rig, median_line, need_autogroups, proc_ticks, wrk_result
SLICES, SLICE = int(env.get("SLICES", "16")), env.get("SLICE", "3")
CONCURRENT = env.get("CONCURRENT", "1") == "1"
if CONCURRENT:
    need_autogroups("pgo.sh: CONCURRENT=1")
UP, PORTS = 18080, (18083, 18084)
rig = Rig("pgo.sh", WORK, env)
rig.need_free(UP, *PORTS)
BINS = {"release": env["BASE_BIN"], "pgo": env["PGO_BIN"]}

def gateway(name, port, binary):
    d = f"{WORK}/{name}"
    os.makedirs(d)
    e = dict(env, BENCH_RUNDIR=d, GATEWAY_PORT=str(port), PROXY_WORKERS="1",
             UPSTREAM_ADDR=f"127.0.0.1:{UP}", EXTRA_CONFIG="", LIENTHONG_BIN=binary)
    log = open(f"{d}/gateway.log", "w")
    p = subprocess.Popen(["taskset", "-c", rig.proxy_cpus, f"{HERE}/benches/gateway-for-bench.sh"],
                         env=e, stdout=log, stderr=log, start_new_session=CONCURRENT)
    rig.procs.append(p)
    rig.wait_up(port)
    return p

def start(p, port, secs):
    w = subprocess.Popen(["taskset", "-c", rig.load_cpus, "wrk", "-t1", "-c64", f"-d{secs}s",
                          f"http://127.0.0.1:{port}/json"], stdout=subprocess.PIPE, text=True)
    return p, w, proc_ticks(p.pid)

def finish(started):
    p, w, t0 = started
    out = w.communicate()[0]
    cpu = (proc_ticks(p.pid) - t0) / rig.tck
    n, rps, errs = wrk_result(out)
    return dict(n=n, rps=rps, us=cpu * 1e6 / max(n, 1), errs=errs)

rr, cr, errs = [], [], 0
try:
    rig.start_upstream(env["UP_BIN"], UP)
    # Two halves with the gateways started in reverse order (the first-started process ran
    # a few percent faster in A/A runs of audit.sh, whichever binary it had).
    for half in (0, 1):
        order = ["release", "pgo"] if half == 0 else ["pgo", "release"]
        rows = {k: (gateway(f"{k}-{half + 1}", port, BINS[k]), port) for k, port in zip(order, PORTS)}
        for k in rows:  # warm-up, untimed
            finish(start(*rows[k], 2))
        n = SLICES // 2 if half == 0 else SLICES - SLICES // 2
        for i in range(n):
            if CONCURRENT:
                started = {k: start(*rows[k], SLICE) for k in rows}
                r = {k: finish(started[k]) for k in started}
            else:
                turn = order if i % 2 == 0 else order[::-1]
                r = {k: finish(start(*rows[k], SLICE)) for k in turn}
            a, b = r["release"], r["pgo"]
            rr.append(b["rps"] / a["rps"])
            cr.append(b["us"] / a["us"])
            errs += a["errs"] + b["errs"]
            print(f"slice {len(rr):2}: release {a['rps']:7.0f} req/s {a['us']:6.2f} us/req | pgo "
                  f"{b['rps']:7.0f} req/s {b['us']:6.2f} us/req | {rr[-1]:.3f}x {cr[-1]:.3f}x", flush=True)
        for k in rows:
            rows[k][0].terminate()
            rows[k][0].wait(timeout=30)
            rig.procs.remove(rows[k][0])
finally:
    rig.stop()
print()
print(f"pgo / release, {len(rr)} slices ({'concurrent' if CONCURRENT else 'alternating'}):")
print("    " + median_line("req/s", rr, 1.0, True))
print("    " + median_line("CPU/req", cr, 1.0, False))
print(f"errors: {errs}")
print(f"PGO binary: {env['PGO_BIN']}  (LIENTHONG_BIN=<it> benches/proxy.sh compares it with nginx)")
if errs:
    sys.exit("pgo.sh: errors during the run")
PY
