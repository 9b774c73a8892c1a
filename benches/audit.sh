#!/usr/bin/env bash
# Audit cost: the same plain proxy route with the audit log off and on (fail-open, the
# default), each gateway with the budget of ../shared/bench/proxy-compare.sh (one core for
# the whole process, writer thread included; the load generator and the harness's
# upstream share the other core).
#
# Both gateways run side by side, and the load alternates between them in short slices
# (off/on, then on/off, ...). A slow drift of a shared machine then hits both rows of a
# pair alike, which separate processes started minutes apart (the harness's way) do not
# give: that method's single pairs scattered by ±30% here. Halfway through, both are
# restarted with their places swapped, because in A/A runs the process started first ran
# 2-6% faster than its twin whichever config it had. Prints every pair, the medians of
# the pair ratios (the verdict) and the pooled totals, how many records the writer
# committed and its own CPU per record.
#
#   benches/audit.sh                  # SLICES=20 SLICE=3 (seconds)
#   AA=1 benches/audit.sh             # A/A: both gateways without the audit log; the
#                                     # spread of the ratios is this machine's noise floor
#   THREADED_OFF=1 benches/audit.sh   # decomposition: the audit-off gateway gets one idle
#                                     # extra thread (an LD_PRELOADed constructor), so the
#                                     # ratio leaves out what any second thread costs a
#                                     # process (glibc's cancellable syscall wrappers and the
#                                     # kernel's shared-fd-table refcounts, on every socket
#                                     # call); the audit's writer thread brings that cost to
#                                     # a single-worker gateway, and a gateway with two or
#                                     # more worker threads pays it with or without the audit
#   CONCURRENT=1 benches/audit.sh     # both gateways loaded at the same time, sharing the
#                                     # one core (each in a session of its own, so the
#                                     # kernel's autogroups give each process half of it,
#                                     # writer thread included): both rows of a pair see
#                                     # the same moment of a noisy machine. Each slice is
#                                     # then one simultaneous pair, and req/s compares two
#                                     # processes given equal CPU time
#   LIENTHONG_BIN=path benches/audit.sh   # skip the build
#
# Needs: apt-get install -y wrk
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
[ -d "$SHARED/bench/upstream" ] || { echo "audit.sh: no harness at $SHARED/bench" >&2; exit 1; }
command -v wrk >/dev/null || { echo "audit.sh: needs wrk (apt-get install -y wrk)" >&2; exit 1; }
[ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}"
# The harness's upstream, built where the harness builds it.
BENCH_WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/lienthong-bench}"
UP_BIN="${CARGO_TARGET_DIR:-$BENCH_WORK/target}/release/upstream"
if [ ! -x "$UP_BIN" ]; then
  (cd "$SHARED/bench/upstream" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BENCH_WORK/target}" \
    cargo build --release --locked --bin upstream -q)
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-auditbench.XXXXXX")"
export WORK UP_BIN HERE
trap 'rm -rf "$WORK"' EXIT
if [ "${THREADED_OFF:-0}" = 1 ]; then
  command -v cc >/dev/null || { echo "audit.sh: THREADED_OFF=1 needs a C compiler" >&2; exit 1; }
  cat >"$WORK/idle-thread.c" <<'C'
#include <pthread.h>
#include <unistd.h>
static void *idle(void *arg) { (void)arg; for (;;) pause(); return 0; }
__attribute__((constructor)) static void start(void) {
  pthread_t t;
  if (pthread_create(&t, 0, idle, 0) == 0) pthread_detach(t);
}
C
  cc -shared -fPIC -O2 -o "$WORK/idle-thread.so" "$WORK/idle-thread.c" -lpthread
fi
python3 - <<'PY'
import os, statistics, subprocess, sys

env = os.environ
HERE, WORK, UP_BIN = env["HERE"], env["WORK"], env["UP_BIN"]
sys.path.insert(0, f"{HERE}/benches")
from benchlib import Rig, need_autogroups, wrk_result
SLICES, SLICE = int(env.get("SLICES", "20")), env.get("SLICE", "3")
CONNS, AA = env.get("CONNS", "64"), env.get("AA", "0") == "1"
THREADED_OFF = env.get("THREADED_OFF", "0") == "1"
CONCURRENT = env.get("CONCURRENT", "0") == "1"
if CONCURRENT:
    need_autogroups("audit.sh: CONCURRENT=1")
UP, FIRST, SECOND = 18080, 18083, 18084
rig = Rig("audit.sh", WORK, env)
LOAD_CPUS, PROXY_CPUS, TCK = rig.load_cpus, rig.proxy_cpus, rig.tck
procs, stop, wait_up = rig.procs, rig.stop, rig.wait_up

def gateway(name, port, audit, idle_thread=False):
    d = f"{WORK}/{name}"
    os.makedirs(d)
    extra = ""
    if audit:
        extra = (f'[audit]\ndb = "{d}/audit.db"\norigin = "bench/audit"\n'
                 f'key = "{HERE}/config/dev/audit-signing.key.pem"\n')
    e = dict(env, BENCH_RUNDIR=d, GATEWAY_PORT=str(port), PROXY_WORKERS="1",
             UPSTREAM_ADDR=f"127.0.0.1:{UP}", EXTRA_CONFIG=extra)
    if idle_thread:
        e["LD_PRELOAD"] = f"{WORK}/idle-thread.so"
    log = open(f"{d}/gateway.log", "w")
    return subprocess.Popen(["taskset", "-c", PROXY_CPUS, f"{HERE}/benches/gateway-for-bench.sh"],
                            env=e, stdout=log, stderr=log, start_new_session=CONCURRENT)

def ticks(pid, comm=None):
    """utime+stime of a process, or of its threads named `comm`."""
    def one(path):
        s = open(path).read()
        f = s[s.rindex(")") + 2:].split()
        return s[s.index("(") + 1:s.rindex(")")], int(f[11]) + int(f[12])
    if comm is None:
        return one(f"/proc/{pid}/stat")[1]
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            c, n = one(f"/proc/{pid}/task/{t}/stat")
        except OSError:
            continue
        tot += n if c == comm else 0
    return tot

def start_load(proc, port, secs):
    t0, w0 = ticks(proc.pid), ticks(proc.pid, "audit-writer")
    w = subprocess.Popen(["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{CONNS}", f"-d{secs}",
                          f"http://127.0.0.1:{port}/json"], stdout=subprocess.PIPE, text=True)
    return proc, w, t0, w0

def finish_load(started):
    proc, w, t0, w0 = started
    out = w.communicate()[0]
    t1, w1 = ticks(proc.pid), ticks(proc.pid, "audit-writer")
    n, rps, errs = wrk_result(out)
    return dict(n=n, rps=rps, cpu=(t1 - t0) / TCK, writer=(w1 - w0) / TCK, errs=errs)

def load(proc, port, secs):
    return finish_load(start_load(proc, port, secs))

def load_both(rows, secs):
    """Both gateways at once (CONCURRENT=1); the CPU ticks of each are read around its
    own wrk, which run over the same seconds."""
    started = {k: start_load(*rows[k], secs) for k in rows}
    return {k: finish_load(started[k]) for k in started}

rig.need_free(UP, FIRST, SECOND)
label = "on (A/A: audit off too)" if AA else "on"
pairs, dbs = [], []
try:
    rig.start_upstream(UP_BIN, UP)
    # Two halves with the gateways' places swapped: the process started first (on the
    # first port) ran a few percent faster than its twin in A/A runs, whichever
    # config it had, so each config gets that place for half of the pairs.
    for half in (0, 1):
        first, second = ("off", "on") if half == 0 else ("on", "off")
        rows = {}
        for k, port in ((first, FIRST), (second, SECOND)):
            name = f"audit-{k}-{half + 1}"
            p = gateway(name, port, k == "on" and not AA, THREADED_OFF and k == "off")
            procs.append(p)
            wait_up(port)
            rows[k] = (p, port)
            if k == "on" and not AA:
                dbs.append(f"{WORK}/{name}/audit.db")
        if CONCURRENT:
            load_both(rows, "2s")  # warm-up, untimed
        else:
            for k in rows:  # warm-up, untimed
                load(*rows[k], "2s")
        n = SLICES // 2 if half == 0 else SLICES - SLICES // 2
        for i in range(n):
            order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
            if CONCURRENT:
                r = load_both(rows, f"{SLICE}s")
            else:
                r = {k: load(*rows[k], f"{SLICE}s") for k in order}
            a, b = r["off"], r["on"]
            pairs.append((a, b))
            print(f"pair {len(pairs):2} (on started {'second' if half == 0 else 'first'}): "
                  f"off {a['rps']:8.0f} req/s {a['cpu'] * 1e6 / a['n']:6.2f} us/req | "
                  f"{label} {b['rps']:8.0f} req/s {b['cpu'] * 1e6 / b['n']:6.2f} us/req | "
                  f"req/s {b['rps'] / a['rps']:.3f}x, CPU/req {(b['cpu'] / b['n']) / (a['cpu'] / a['n']):.3f}x",
                  flush=True)
        for k in rows:
            p = rows[k][0]
            p.terminate()
            p.wait(timeout=30)
            procs.remove(p)
finally:
    stop()

rr = [b["rps"] / a["rps"] for a, b in pairs]
cr = [(b["cpu"] / b["n"]) / (a["cpu"] / a["n"]) for a, b in pairs]
tot = {k: {f: sum(p[j][f] for p in pairs) for f in ("n", "cpu", "writer", "errs")}
       for j, k in ((0, "off"), (1, "on"))}
print()
print(f"median of {len(pairs)} pair ratios (audit on / off): req/s {statistics.median(rr):.3f}x, "
      f"CPU/req {statistics.median(cr):.3f}x   (pairs: req/s {min(rr):.2f}-{max(rr):.2f}x, "
      f"CPU/req {min(cr):.2f}-{max(cr):.2f}x)")
for k in ("off", "on"):
    t = tot[k]
    print(f"  {k:3}: {t['n']} requests, {t['cpu'] * 1e6 / t['n']:.2f} us CPU/req pooled, errors {t['errs']}")
print(f"  pooled: req {tot['on']['n'] / tot['off']['n']:.3f}x, CPU/req "
      f"{(tot['on']['cpu'] / tot['on']['n']) / (tot['off']['cpu'] / tot['off']['n']):.3f}x")
if THREADED_OFF:
    print("decomposition: the audit-off gateway ran with one idle extra thread")
if CONCURRENT:
    print("concurrent: both gateways were loaded at the same time, sharing one core")
if AA:
    print("A/A calibration: both gateways ran without the audit log")
else:
    import sqlite3
    recs = sum(sqlite3.connect(db).execute("select coalesce(sum(count), 0) from audit_segments")
               .fetchone()[0] for db in dbs)
    on_secs = len(pairs) * float(SLICE)
    print(f"records committed: {recs} (every request of the audit-on gateways, warm-ups included); "
          f"in the timed slices the writer kept up with {tot['on']['n'] / on_secs:.0f} records/s, "
          f"its own thread using {tot['on']['writer'] * 1e6 / max(tot['on']['n'], 1):.2f} us CPU/record")
if tot["off"]["errs"] or tot["on"]["errs"]:
    sys.exit("audit.sh: errors during the run")
PY
