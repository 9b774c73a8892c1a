#!/usr/bin/env bash
# Plain proxy, lienthong against nginx loaded in the same seconds: the companion of
# benches/proxy.sh for noisy machines. proxy.sh (the shared harness) measures one proxy
# after the other, and on a VM whose speed moves by 30% or more from one slice to the next
# its medians can land anywhere (one run here had nginx's rounds between 49k and 90k
# req/s). Here both proxies share the one proxy core at the same time, each in a session
# of its own, so the kernel's autogroups give each process half of it; every slice is one
# simultaneous pair, and the pair's ratios compare the two proxies at the same moment of
# the machine. Same budget as the harness: one core for the proxies, one worker each
# (nginx's master and worker share its half), nginx configured from the harness's own
# template; the load generators and the harness's upstream share the other core.
#
# Prints every pair, the medians of the pair ratios (lienthong / nginx: req/s and proxy
# CPU per request) with a distribution-free 95% confidence interval and a verdict against
# the issue's target (>= 1.0x, <= 1.0x: meets, misses, or inconclusive when the interval
# straddles it), and the pooled totals. Both proxies together ask more of the load core
# than one does: the script prints how busy the load core was, and a pair where it was
# saturated says little about req/s (CPU per request still holds).
#
# LATENCY=1 measures fixed-rate latency the same way: in every slice oha sends LAT_RATE
# requests/s (default 2000, as proxy.sh) over LAT_CONNS (16) connections to each proxy at
# once, and the pair's ratios are lienthong's p99 and p50 over nginx's. proxy.sh measures
# one proxy after the other, and this VM's stalls of several milliseconds decide whose
# p99 is worse in a round; here a stall lands on both.
#
#   benches/proxy-concurrent.sh            # SLICES=20 SLICE=3 (seconds) CONNS=64
#   LIENTHONG_BIN=path benches/proxy-concurrent.sh   # skip the build
#   LATENCY=1 benches/proxy-concurrent.sh  # fixed-rate p99/p50 pairs instead (needs oha)
#   AA=1 benches/proxy-concurrent.sh       # A/A: a second nginx in lienthong's place; the
#                                          # spread of its ratios is the method's noise floor
#   FLOOR=task benches/proxy-concurrent.sh # the bare hyper proxy (benches/hyper-floor) in
#   FLOOR=in-task ...                      # lienthong's place, with its upstream connections
#                                          # on tasks of their own (hyper's and lienthong's
#                                          # way) or driven in the client connection's task;
#                                          # the rows keep the name "lienthong"
#
# Needs: apt-get install -y wrk nginx; kernel autogroups (the default on most kernels).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LIENTHONG_SHARED:-$HERE/../shared}"
[ -f "$SHARED/bench/conf/nginx.conf.in" ] || { echo "proxy-concurrent.sh: no harness at $SHARED/bench" >&2; exit 1; }
for c in wrk nginx; do
  command -v "$c" >/dev/null || { echo "proxy-concurrent.sh: needs $c (apt-get install -y wrk nginx)" >&2; exit 1; }
done
. "$HERE/benches/benchlib.sh"
case "${FLOOR:-}" in
  "")
    [ -n "${LIENTHONG_BIN:-}" ] || (cd "$HERE" && cargo build --release --locked --bin lienthong)
    export LIENTHONG_BIN="${LIENTHONG_BIN:-$HERE/target/release/lienthong}" ;;
  task | in-task) build_hyper_floor; export FLOOR_BIN ;;
  *) echo "proxy-concurrent.sh: FLOOR is task or in-task" >&2; exit 1 ;;
esac
# The harness's upstream, built where the harness builds it.
harness_upstream
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-proxyconc.XXXXXX")"
chmod 755 "$WORK"
export WORK UP_BIN HERE SHARED
trap 'rm -rf "$WORK"' EXIT
python3 - <<'PY'
import json, os, statistics, subprocess, sys

env = os.environ
HERE, WORK, UP_BIN, SHARED = env["HERE"], env["WORK"], env["UP_BIN"], env["SHARED"]
sys.path.insert(0, f"{HERE}/benches")
from benchlib import Rig, median_line, need_autogroups, stat_fields, wrk_result
SLICES, SLICE, CONNS = int(env.get("SLICES", "20")), env.get("SLICE", "3"), env.get("CONNS", "64")
AA = env.get("AA", "0") == "1"
FLOOR = env.get("FLOOR", "")
LATENCY = env.get("LATENCY", "0") == "1"
LAT_RATE, LAT_CONNS = env.get("LAT_RATE", "2000"), env.get("LAT_CONNS", "16")
need_autogroups("proxy-concurrent.sh")
UP, NGINX, GW = 18080, 18081, 18083
rig = Rig("proxy-concurrent.sh", WORK, env)
LOAD_CPUS, PROXY_CPUS, TCK = rig.load_cpus, rig.proxy_cpus, rig.tck
procs, stop, wait_up = rig.procs, rig.stop, rig.wait_up

def session_ticks(sid):
    """utime+stime of every process in session `sid` (nginx: master and worker)."""
    tot = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            f = stat_fields(pid)
        except OSError:
            continue
        if int(f[3]) == sid:
            tot += int(f[11]) + int(f[12])
    return tot

def cpu_ticks(cpu):
    """Busy ticks of one CPU (everything but idle and iowait), for the load core's load."""
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] == f"cpu{cpu}":
            v = list(map(int, f[1:]))
            return sum(v) - v[3] - v[4], sum(v)
    return 0, 1

rig.need_free(UP, NGINX, GW)
rows = {}
try:
    rig.start_upstream(UP_BIN, UP)
    def nginx(name, port):
        d = f"{WORK}/{name}"
        os.makedirs(d)
        conf = open(f"{SHARED}/bench/conf/nginx.conf.in").read()
        for k, v in {"@RUNDIR@": d, "@WORKERS@": "1", "@UPSTREAM@": f"127.0.0.1:{UP}",
                     "@LISTEN@": f"127.0.0.1:{port}"}.items():
            conf = conf.replace(k, v)
        open(f"{d}/nginx.conf", "w").write(conf)
        log = open(f"{d}/nginx.log", "w")
        return subprocess.Popen(["taskset", "-c", PROXY_CPUS, "nginx", "-p", d, "-c",
                                 f"{d}/nginx.conf", "-e", f"{d}/nginx-error.log"],
                                stdout=log, stderr=log, start_new_session=True)

    p = nginx("nginx", NGINX)
    procs.append(p)
    wait_up(NGINX)
    rows["nginx"] = (p, NGINX)
    if AA:
        p = nginx("nginx-aa", GW)
    elif FLOOR:
        os.makedirs(f"{WORK}/floor")
        log = open(f"{WORK}/floor/floor.log", "w")
        mode = ["in-task"] if FLOOR == "in-task" else []
        p = subprocess.Popen(["taskset", "-c", PROXY_CPUS, env["FLOOR_BIN"], f"127.0.0.1:{GW}",
                              f"127.0.0.1:{UP}"] + mode,
                             stdout=log, stderr=log, start_new_session=True)
    else:
        os.makedirs(f"{WORK}/lienthong")
        log = open(f"{WORK}/lienthong/gateway.log", "w")
        p = subprocess.Popen(["taskset", "-c", PROXY_CPUS, f"{HERE}/benches/gateway-for-bench.sh"],
                             env=dict(env, BENCH_RUNDIR=f"{WORK}/lienthong", GATEWAY_PORT=str(GW),
                                      PROXY_WORKERS="1", UPSTREAM_ADDR=f"127.0.0.1:{UP}"),
                             stdout=log, stderr=log, start_new_session=True)
    procs.append(p)
    wait_up(GW)
    rows["lienthong"] = (p, GW)

    def load_both(secs):
        started = {}
        for k, (proc, port) in rows.items():
            t0 = session_ticks(proc.pid)
            w = subprocess.Popen(["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{CONNS}", f"-d{secs}",
                                  f"http://127.0.0.1:{port}/json"], stdout=subprocess.PIPE, text=True)
            started[k] = (proc, w, t0)
        l0 = cpu_ticks(LOAD_CPUS.split(",")[0])
        out = {}
        for k, (proc, w, t0) in started.items():
            text = w.communicate()[0]
            t1 = session_ticks(proc.pid)
            n, rps, errs = wrk_result(text)
            out[k] = dict(n=n, rps=rps, cpu=(t1 - t0) / TCK, errs=errs)
        l1 = cpu_ticks(LOAD_CPUS.split(",")[0])
        out["load"] = (l1[0] - l0[0]) / max(1, l1[1] - l0[1])
        return out

    def latency_both(secs):
        """oha at a fixed rate against both proxies at once: p50, p99 (us), errors."""
        started = {k: subprocess.Popen(
            ["taskset", "-c", LOAD_CPUS, "oha", "-z", f"{secs}s", "-c", LAT_CONNS, "-q", LAT_RATE,
             "--latency-correction", "--no-tui", "--output-format", "json",
             f"http://127.0.0.1:{port}/json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for k, (proc, port) in rows.items()}
        out = {}
        for k, w in started.items():
            d = json.loads(w.communicate()[0])
            p = d["latencyPercentiles"]
            codes = d.get("statusCodeDistribution", {})
            bad = sum(v for c, v in codes.items() if c != "200")
            # Requests still in flight when the slice ends are "aborted due to
            # deadline": oha's cut-off, not the proxy's error.
            errs = {e: v for e, v in d.get("errorDistribution", {}).items()
                    if e != "aborted due to deadline"}
            out[k] = dict(p50=p["p50"] * 1e6, p99=p["p99"] * 1e6,
                          errs=sum(errs.values()) + bad, n=sum(codes.values()))
        return out

    load_both(2)  # warm-up, both at once
    pairs = []
    if LATENCY:
        for i in range(SLICES):
            r = latency_both(SLICE)
            g, n = r["lienthong"], r["nginx"]
            pairs.append(r)
            print(f"pair {i + 1:2}: nginx p50 {n['p50']:7.1f} p99 {n['p99']:8.1f} us | lienthong "
                  f"p50 {g['p50']:7.1f} p99 {g['p99']:8.1f} us | p99 {g['p99'] / n['p99']:.3f}x, "
                  f"p50 {g['p50'] / n['p50']:.3f}x | errors {n['errs']}/{g['errs']}", flush=True)
    for i in range(0 if LATENCY else SLICES):
        r = load_both(SLICE)
        g, n = r["lienthong"], r["nginx"]
        us = lambda x: x["cpu"] * 1e6 / max(1, x["n"])
        pairs.append(r)
        print(f"pair {i + 1:2}: nginx {n['rps']:8.0f} req/s {us(n):6.2f} us/req | lienthong "
              f"{g['rps']:8.0f} req/s {us(g):6.2f} us/req | req/s {g['rps'] / n['rps']:.3f}x, "
              f"CPU/req {us(g) / us(n):.3f}x | load core busy {r['load'] * 100:3.0f}%", flush=True)
finally:
    stop()

if LATENCY:
    p99 = [p["lienthong"]["p99"] / p["nginx"]["p99"] for p in pairs]
    p50 = [p["lienthong"]["p50"] / p["nginx"]["p50"] for p in pairs]
    print()
    if AA:
        print("A/A: the 'lienthong' row is a second nginx")
    if FLOOR:
        print(f"FLOOR={FLOOR}: the 'lienthong' row is the bare hyper proxy (benches/hyper-floor)")
    print(f"fixed-rate ({LAT_RATE} req/s, {LAT_CONNS} connections each, both at once): median of "
          f"{len(pairs)} pair ratios (lienthong / nginx): p99 {statistics.median(p99):.3f}x, "
          f"p50 {statistics.median(p50):.3f}x   (pairs: p99 {min(p99):.2f}-{max(p99):.2f}x)")
    print(f"    {median_line('p99', p99, 1.0, False)}; {median_line('p50', p50, 1.0, False)}")
    for k in ("nginx", "lienthong"):
        print(f"  {k:9}: median p99 {statistics.median(p[k]['p99'] for p in pairs):.1f} us, "
              f"median p50 {statistics.median(p[k]['p50'] for p in pairs):.1f} us, "
              f"{sum(p[k]['n'] for p in pairs)} responses, errors {sum(p[k]['errs'] for p in pairs)}")
    sys.exit(0)
us = lambda x: x["cpu"] * 1e6 / max(1, x["n"])
rr = [p["lienthong"]["rps"] / p["nginx"]["rps"] for p in pairs]
cr = [us(p["lienthong"]) / us(p["nginx"]) for p in pairs]
print()
if AA:
    print("A/A: the 'lienthong' row is a second nginx")
if FLOOR:
    print(f"FLOOR={FLOOR}: the 'lienthong' row is the bare hyper proxy (benches/hyper-floor)")
print(f"median of {len(pairs)} pair ratios (lienthong / nginx): req/s {statistics.median(rr):.3f}x, "
      f"CPU/req {statistics.median(cr):.3f}x   (pairs: req/s {min(rr):.2f}-{max(rr):.2f}x, "
      f"CPU/req {min(cr):.2f}-{max(cr):.2f}x)")
print(f"    {median_line('req/s', rr, 1.0, True)}; {median_line('CPU/req', cr, 1.0, False)}")
for k in ("nginx", "lienthong"):
    n = sum(p[k]["n"] for p in pairs)
    c = sum(p[k]["cpu"] for p in pairs)
    e = sum(p[k]["errs"] for p in pairs)
    print(f"  {k:9}: {n} requests, {c * 1e6 / n:.2f} us CPU/req pooled, errors {e}")
busy_load = statistics.median(p["load"] for p in pairs)
print(f"load core busy (median): {busy_load * 100:.0f}%"
      + ("  -- saturated: req/s ratios are capped by the load generator, CPU/req still holds"
         if busy_load > 0.97 else ""))
PY
