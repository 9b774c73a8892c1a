"""Helpers shared by the Python inside the benchmark scripts (audit.sh, proxy-concurrent.sh,
pgo.sh): the processes a run started, waiting for a server, autogroup scheduling, a process's
CPU ticks, wrk's summary, and the medians' confidence intervals and verdicts."""
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def need_autogroups(what):
    """Exit unless the kernel's autogroups are on: the concurrent modes rely on them to give
    each process (started in a session of its own) an equal share of the shared core."""
    try:
        on = open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() == "1"
    except OSError:
        on = False
    if not on:
        sys.exit(f"{what} needs the kernel's autogroup scheduling "
                 "(/proc/sys/kernel/sched_autogroup_enabled = 1)")


class Procs(list):
    """The processes a run started: `stop()` ends them all (TERM, then KILL after 10 s)."""

    def stop(self):
        for p in self:
            if p.poll() is None:
                p.terminate()
        for p in self:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class Rig:
    """One run's set-up: the harness's pinning (the proxies on their own core, the load
    generator and the upstream on the other), the processes started, the upstream."""

    def __init__(self, script, work, env):
        ncpu = os.cpu_count() or 1
        self.load_cpus = env.get("LOAD_CPUS", "0")
        self.proxy_cpus = env.get("PROXY_CPUS", "1" if ncpu >= 2 else "0")
        self.tck = os.sysconf("SC_CLK_TCK")
        self.procs = Procs()
        self.script, self.work, self.env = script, work, env
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))

    def stop(self):
        self.procs.stop()

    def need_free(self, *ports):
        for p in ports:
            if busy(p):
                sys.exit(f"{self.script}: port {p} already in use")

    def wait_up(self, port, path="/json"):
        wait_up(port, self.procs, self.script, self.work, path)

    def start_upstream(self, up_bin, port):
        """The harness's upstream, one thread, on the load core."""
        self.procs.append(subprocess.Popen(
            ["taskset", "-c", self.load_cpus, up_bin, f"127.0.0.1:{port}"],
            env=dict(self.env, UPSTREAM_THREADS="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.wait_up(port, "/health")


def busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_up(port, procs, script, logs, path="/json"):
    """Wait until a GET of `path` on `port` answers; else stop everything and exit."""
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    procs.stop()
    sys.exit(f"{script}: nothing answers on port {port} (logs in {logs})")


def stat_fields(proc):
    """The fields of /proc/<proc>/stat after the command name (`proc` is a pid, or
    "<pid>/task/<tid>" for one thread): state, ppid, pgrp, session, ...; [11] and [12] are
    utime and stime."""
    s = open(f"/proc/{proc}/stat").read()
    return s[s.rindex(")") + 2:].split()


def proc_ticks(proc):
    """utime+stime of a process (every thread) or of one thread, in clock ticks."""
    f = stat_fields(proc)
    return int(f[11]) + int(f[12])


def wrk_result(out):
    """Requests, req/s and errors (non-2xx/3xx answers and socket errors) of a wrk run."""
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs += sum(map(int, m.groups())) if m else 0
    return n, rps, errs


def median_ci(xs, level=0.95):
    """Distribution-free confidence interval of the median of `xs`: the order statistics
    x(j) and x(n+1-j), for the largest j whose interval covers the median with at least
    `level` probability (the count of values below the median is Binomial(n, 1/2); nothing
    is assumed about the shape of the noise). None when there are too few values (n < 6)."""
    s = sorted(xs)
    n = len(s)
    below = 0  # P(B <= j - 1) for B ~ Binomial(n, 1/2), accumulated as j grows
    best = None
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2 ** n
        if 1 - 2 * below < level:
            break
        best = (s[j - 1], s[n - j])
    return best


def against(ci, target, at_least):
    """Verdict of a median's confidence interval against a target: 'meets' or 'misses' when
    the whole interval is on one side, 'inconclusive' when it straddles the target."""
    if ci is None:
        return "too few values for a verdict"
    lo, hi = ci
    ok_all, ok_none = (lo >= target, hi < target) if at_least else (hi <= target, lo > target)
    return "meets" if ok_all else "misses" if ok_none else "inconclusive"


def median_line(name, xs, target, at_least):
    """'req/s 0.907x (95% CI 0.880-0.931x; target >= 0.9x: inconclusive)'."""
    ci = median_ci(xs)
    span = f"95% CI {ci[0]:.3f}-{ci[1]:.3f}x" if ci else "no CI"
    sign = ">=" if at_least else "<="
    return (f"{name} {statistics.median(xs):.3f}x ({span}; target {sign} {target}x: "
            f"{against(ci, target, at_least)})")
