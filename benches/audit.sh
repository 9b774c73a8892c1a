#!/usr/bin/env bash
# Audit cost: the same plain proxy route with the audit log off and on (fail-open, the
# default), each gateway's request path with the budget of ../shared/bench/proxy-compare.sh
# (one worker thread on one core; the load generator and the harness's upstream share the
# other core). The audit log is measured in two placements of its writer thread, in the
# same run against the same audit-off baseline:
#   on     the whole process on the proxy core, writer included: the request path and the
#          writer share one core, so req/s also pays for the writer's CPU;
#   split  the writer thread moved to the other core (`taskset -p` on its thread), as on
#          any host with more than one core: req/s measures what the audit adds to the
#          request path, and CPU/req still counts the writer's CPU wherever it ran. The
#          writer then competes with the load generator and the upstream, so if anything
#          this row is handicapped.
# CPU/req is the process's CPU (every thread) per request in both rows.
#
# The gateways run side by side, and the load goes to each in turn in short slices (the
# order rotates from slice to slice). A slow drift of a shared machine then hits the rows
# of one slice alike, which separate processes started minutes apart (the harness's way)
# do not give: that method's single pairs scattered by ±30% here. Halfway through, all
# are restarted in the reverse order, because in A/A runs the process started first ran
# 2-6% faster than its twin whichever config it had. Prints every slice, the medians of
# the per-slice ratios against the audit-off row (the verdict) with a distribution-free 95%
# confidence interval and whether it meets the issue's target (req/s >= 0.9x, CPU/req <=
# 1.15x), lies beyond it or straddles it ("inconclusive": run more slices), the pooled
# totals, how many records the writers committed and their own CPU per record.
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
#   SPLIT=0 benches/audit.sh          # no `split` row (two gateways, shorter run)
#   CONCURRENT=1 benches/audit.sh     # off and on loaded at the same time, sharing the
#                                     # one core (each in a session of its own, so the
#                                     # kernel's autogroups give each process half of it,
#                                     # writer thread included): both rows of a pair see
#                                     # the same moment of a noisy machine. Each slice is
#                                     # then one simultaneous pair, and req/s compares two
#                                     # processes given equal CPU time. No `split` row: a
#                                     # process with threads on two cores gets its group's
#                                     # share divided between them, so it would get less
#                                     # than half of the shared core
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
. "$HERE/benches/benchlib.sh"
harness_upstream
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
from benchlib import Rig, median_line, need_autogroups, proc_ticks, wrk_result
SLICES, SLICE = int(env.get("SLICES", "20")), env.get("SLICE", "3")
CONNS, AA = env.get("CONNS", "64"), env.get("AA", "0") == "1"
THREADED_OFF = env.get("THREADED_OFF", "0") == "1"
CONCURRENT = env.get("CONCURRENT", "0") == "1"
SPLIT = env.get("SPLIT", "1") == "1" and not CONCURRENT and not AA
if CONCURRENT:
    need_autogroups("audit.sh: CONCURRENT=1")
UP, PORTS = 18080, (18083, 18084, 18085)
rig = Rig("audit.sh", WORK, env)
LOAD_CPUS, PROXY_CPUS, TCK = rig.load_cpus, rig.proxy_cpus, rig.tck
procs, stop, wait_up = rig.procs, rig.stop, rig.wait_up
KEYS = ["off", "on"] + (["split"] if SPLIT else [])
AUDIT = {"off": False, "on": not AA, "split": True}

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

def threads(pid, comm):
    """The ids of a process's threads named `comm`."""
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().strip() == comm:
                out.append(t)
        except OSError:
            pass
    return out

def move_writer(pid):
    """The `split` row: the audit writer thread leaves the proxy core for the load core."""
    tids = threads(pid, "audit-writer")
    if not tids:
        sys.exit("audit.sh: the split gateway has no audit-writer thread")
    for t in tids:
        subprocess.run(["taskset", "-p", "-c", LOAD_CPUS, t], check=True,
                       stdout=subprocess.DEVNULL)

def ticks(pid, comm=None):
    """utime+stime of a process, or of its threads named `comm`."""
    if comm is None:
        return proc_ticks(pid)
    tot = 0
    for t in threads(pid, comm):
        try:
            tot += proc_ticks(f"{pid}/task/{t}")
        except OSError:
            continue
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

def us(r):
    return r["cpu"] * 1e6 / r["n"]

rig.need_free(UP, *PORTS[:len(KEYS)])
label = {"off": "off", "on": "on (A/A: audit off too)" if AA else "on", "split": "split"}
slices, dbs = [], []
try:
    rig.start_upstream(UP_BIN, UP)
    # Two halves with the gateways started in reverse order: the process started first
    # (on the first port) ran a few percent faster than its twin in A/A runs, whichever
    # config it had, so each config gets each place for half of the slices.
    for half in (0, 1):
        order = KEYS if half == 0 else KEYS[::-1]
        rows = {}
        for k, port in zip(order, PORTS):
            name = f"audit-{k}-{half + 1}"
            p = gateway(name, port, AUDIT[k], THREADED_OFF and k == "off")
            procs.append(p)
            wait_up(port)
            if k == "split":
                move_writer(p.pid)
            rows[k] = (p, port)
            if AUDIT[k]:
                dbs.append(f"{WORK}/{name}/audit.db")
        if CONCURRENT:
            load_both(rows, "2s")  # warm-up, untimed
        else:
            for k in rows:  # warm-up, untimed
                load(*rows[k], "2s")
        n = SLICES // 2 if half == 0 else SLICES - SLICES // 2
        for i in range(n):
            if CONCURRENT:
                r = load_both(rows, f"{SLICE}s")
            else:
                turn = KEYS[i % len(KEYS):] + KEYS[:i % len(KEYS)]
                r = {k: load(*rows[k], f"{SLICE}s") for k in turn}
            slices.append(r)
            a = r["off"]
            line = f"slice {len(slices):2} (started {'-'.join(order)}): off {a['rps']:7.0f} req/s {us(a):6.2f} us/req"
            for k in KEYS[1:]:
                b = r[k]
                line += (f" | {label[k]} {b['rps']:7.0f} req/s {us(b):6.2f} us/req "
                         f"{b['rps'] / a['rps']:.3f}x {us(b) / us(a):.3f}x")
            print(line, flush=True)
        for k in rows:
            p = rows[k][0]
            p.terminate()
            p.wait(timeout=30)
            procs.remove(p)
finally:
    stop()

tot = {k: {f: sum(r[k][f] for r in slices) for f in ("n", "cpu", "writer", "errs")} for k in KEYS}
print()
for k in KEYS:
    t = tot[k]
    print(f"  {k:5}: {t['n']} requests, {t['cpu'] * 1e6 / t['n']:.2f} us CPU/req pooled, errors {t['errs']}")
for k in KEYS[1:]:
    rr = [r[k]["rps"] / r["off"]["rps"] for r in slices]
    cr = [us(r[k]) / us(r["off"]) for r in slices]
    what = {"on": "writer on the proxy core" if not AA else "A/A: audit off in both",
            "split": "writer thread on the load core"}[k]
    print(f"{label[k]} / off ({what}): median of {len(slices)} slice ratios: "
          f"req/s {statistics.median(rr):.3f}x, CPU/req {statistics.median(cr):.3f}x   "
          f"(slices: req/s {min(rr):.2f}-{max(rr):.2f}x, CPU/req {min(cr):.2f}-{max(cr):.2f}x; "
          f"pooled: req {tot[k]['n'] / tot['off']['n']:.3f}x, CPU/req "
          f"{(tot[k]['cpu'] / tot[k]['n']) / (tot['off']['cpu'] / tot['off']['n']):.3f}x)")
    print(f"    {median_line('req/s', rr, 0.9, True)}; {median_line('CPU/req', cr, 1.15, False)}")
if THREADED_OFF:
    print("decomposition: the audit-off gateway ran with one idle extra thread")
if CONCURRENT:
    print("concurrent: off and on were loaded at the same time, sharing one core")
if AA:
    print("A/A calibration: both gateways ran without the audit log")
else:
    import sqlite3
    recs = sum(sqlite3.connect(db).execute("select coalesce(sum(count), 0) from audit_segments")
               .fetchone()[0] for db in dbs)
    secs = len(slices) * float(SLICE)
    print(f"records committed: {recs} (every request of the audit-on gateways, warm-ups included)")
    for k in KEYS[1:]:
        t = tot[k]
        print(f"  {k:5}: in the timed slices the writer kept up with {t['n'] / secs:.0f} records/s, "
              f"its own thread using {t['writer'] * 1e6 / max(t['n'], 1):.2f} us CPU/record")
if any(tot[k]["errs"] for k in KEYS):
    sys.exit("audit.sh: errors during the run")
PY
