#!/usr/bin/env bash
# translate.sh - acceptance benchmark of the XML<->JSON translation engine, one run:
#  1. benches/translate.rs: quick-xml raw event parse (as ../shared/bench/parse-bench.sh
#     measures it) vs lienthong::translate xml_to_json / json_to_xml, MB/s on ~10 KB and
#     ~1 MB documents (parse-bench's `persons` document and a namespaced Vietnamese
#     `dossier` document), same process; goal: xml->json >= 0.5x raw events;
#  2. Python xmltodict on the very same files (parse + json.dumps; json.loads + unparse of
#     the engine's JSON), same sampling; goal: lienthong >= 10x xmltodict;
#  3. a ~100 MB dossier document translated once in each direction: peak RSS
#     (/usr/bin/time -v, else VmHWM) and RSS / document size; xmltodict's peak RSS on the
#     same file as a reference (skipped after PY_BIG_TIMEOUT seconds).
# Prints a summary block with the ratios at the end. Local files only; nothing is fetched.
#
# Usage: benches/translate.sh [--quick]
# Env:   BENCH_CPU [1]  CPU to pin to (taskset); '' = no pinning
#        SAMPLE_MS, SAMPLES  per-sample batch length and sample count (as parse-bench)
#        BIG_MB [100]  size of the big document (MiB); 0 = skip step 3
#        PY_BIG_TIMEOUT [120]  seconds allowed for xmltodict on the big document
#        TRANSLATE_BENCH_BIN  path of an already built bench binary (skips the build)
#        KEEP=1  keep the work folder (documents, JSON forms, TSVs)
#        CARGO_TARGET_DIR, CARGO_BUILD_JOBS  as usual for the build
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIG_MB="${BIG_MB:-100}"
PY_BIG_TIMEOUT="${PY_BIG_TIMEOUT:-120}"
CPU="${BENCH_CPU-1}"
QUICK=()
for a in "$@"; do [ "$a" = "--quick" ] && QUICK=(--quick); done
if [ ${#QUICK[@]} -gt 0 ]; then
  export SAMPLE_MS="${SAMPLE_MS:-80}" SAMPLES="${SAMPLES:-3}"
else
  export SAMPLE_MS="${SAMPLE_MS:-300}" SAMPLES="${SAMPLES:-5}"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lienthong-translatebench.XXXXXX")"
if [ -n "${KEEP:-}" ]; then echo "# work folder kept: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

PIN=()
if [ -n "$CPU" ] && [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null; then
  PIN=(taskset -c "$CPU")
fi
TIME=()
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -v); fi

# ---------------------------------------------------------------- build
if [ -z "${TRANSLATE_BENCH_BIN:-}" ]; then
  TRANSLATE_BENCH_BIN="$(cd "$HERE" && cargo bench --locked --bench translate --no-run \
      --message-format=json-render-diagnostics | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("name") == "translate" and "bench" in t.get("kind", []):
        exe = m.get("executable") or exe
print(exe or "")')"
fi
BIN="$TRANSLATE_BENCH_BIN"
[ -x "$BIN" ] || { echo "bench binary not found (build failed?)" >&2; exit 1; }

echo "# host=$(uname -n) cpus=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# $(rustc --version); quick-xml $(grep -A1 '^name = "quick-xml"' "$HERE/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p'); $(python3 -c 'import sys, importlib.metadata as m; print("python", sys.version.split()[0], "xmltodict", m.version("xmltodict"))')"
# The machine is shared and its vCPUs may be siblings of one core: work on another CPU slows
# the pinned one. Its busy share during the timed sections is printed with the results.
OTHER=""
if [ ${#PIN[@]} -gt 0 ]; then
  for c in $(seq 0 $(( $(nproc) - 1 ))); do [ "$c" != "$CPU" ] && { OTHER=$c; break; }; done
fi
cpu_ticks() { awk -v c="cpu$OTHER" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat; }
busy_since() { # "total idle" at start -> busy %
  local now; now=($(cpu_ticks)); local start=($1)
  awk -v t="$(( now[0] - start[0] ))" -v i="$(( now[1] - start[1] ))" 'BEGIN { printf "%.0f%%", (t > 0) ? 100 * (t - i) / t : 0 }'
}
echo "# $(ldd --version 2>/dev/null | head -1 | sed 's/^ldd //'); pinned: ${PIN[*]:-no}; bench binary: $BIN"

# ---------------------------------------------------------------- python helper
cat > "$WORK/pybench.py" <<'PY'
import json, os, resource, statistics, sys, time
import xmltodict

def calibrate(f, sample):
    iters = 1
    while True:
        t = time.perf_counter()
        for _ in range(iters):
            f()
        el = time.perf_counter() - t
        if el >= sample / 4:
            return max(1, int(-(-sample // (el / iters))))
        iters *= 4

def rates(docs, out_tsv):
    """Same sampling as the Rust bench: batches >= SAMPLE_MS, SAMPLES samples round-robin."""
    sample = int(os.environ.get("SAMPLE_MS", "300")) / 1000
    samples = max(1, int(os.environ.get("SAMPLES", "5")))
    rows = []
    print(f"# xmltodict: sample {int(sample*1000)} ms x {samples} samples (round-robin), median (and best); MB = 1e6 bytes of input")
    print(f"{'measurement':<22} {'doc':<8} {'size':<6} {'bytes':>9}  {'MB/s':>10} {'(best)':>14} {'us/doc':>12}")
    for doc in ("persons", "dossier"):
        for size in ("10KB", "1MB"):
            xml = open(os.path.join(docs, f"{doc}-{size}.xml"), "rb").read()
            js = open(os.path.join(docs, f"{doc}-{size}.json"), "rb").read()
            lines = [
                ("xmltodict xml->json", xml,
                 lambda: json.dumps(xmltodict.parse(xml), ensure_ascii=False).encode("utf-8")),
                ("xmltodict json->xml", js,
                 lambda: xmltodict.unparse(json.loads(js)).encode("utf-8")),
            ]
            iters = [calibrate(f, sample) for _, _, f in lines]
            res = [[] for _ in lines]
            for _ in range(samples):
                for k, (_, _, f) in enumerate(lines):
                    t = time.perf_counter()
                    for _ in range(iters[k]):
                        f()
                    res[k].append((time.perf_counter() - t) / iters[k])
            for (name, data, _), r in zip(lines, res):
                r.sort()
                med = r[len(r) // 2]
                mb, best = len(data) / med / 1e6, len(data) / r[0] / 1e6
                print(f"{name:<22} {doc:<8} {size:<6} {len(data):>9}  {mb:>10.2f} {'(best %.2f)' % best:>14} {med*1e6:>12.1f}")
                rows.append(f"{doc}\t{size}\t{name}\t{len(data)}\t{mb:.4f}\t{best:.4f}")
    with open(out_tsv, "w") as f:
        f.write("\n".join(rows) + "\n")

def big(path):
    data = open(path, "rb").read()
    t = time.perf_counter()
    out = json.dumps(xmltodict.parse(data), ensure_ascii=False).encode("utf-8")
    el = time.perf_counter() - t
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"pybig in_bytes={len(data)} out_bytes={len(out)} translate_s={el:.3f} mbps={len(data)/el/1e6:.2f} maxrss_kb={rss_kb}")

def load_tsv(path):
    d = {}
    if not os.path.exists(path):
        return d
    for line in open(path):
        p = line.rstrip("\n").split("\t")
        if len(p) == 6 and p[0] != "doc":
            d[(p[0], p[1], p[2])] = float(p[4])
    return d

def summary(rust_tsv, py_tsv, big_kv):
    r, p = load_tsv(rust_tsv), load_tsv(py_tsv)
    kv = {}
    if os.path.exists(big_kv):
        for line in open(big_kv):
            if "=" in line:
                k, v = line.strip().split("=", 1)
                kv[k] = v
    verdict = lambda x, goal: "MEETS" if x >= goal else "BELOW GOAL"
    print()
    print("==================== translate benchmark summary (one run) ====================")
    print("XML->JSON vs quick-xml raw event parse, same document, same process (goal >= 0.5x):")
    for doc in ("persons", "dossier"):
        for size in ("10KB", "1MB"):
            ev, x = r.get((doc, size, "xml.events")), r.get((doc, size, "lienthong xml->json"))
            evt = r.get((doc, size, "xml.events+text"))
            if ev and x:
                print(f"  {doc:<8} {size:<5} {x:8.1f} / {ev:8.1f} MB/s = {x/ev:5.2f}x  {verdict(x/ev, 0.5):<10}"
                      f"  (vs events+text {evt:.1f} MB/s: {x/evt:.2f}x)")
    print("lienthong vs Python xmltodict on the same files (goal >= 10x):")
    for d_r, d_p, label in (("lienthong xml->json", "xmltodict xml->json", "xml->json"),
                            ("lienthong json->xml", "xmltodict json->xml", "json->xml")):
        for doc in ("persons", "dossier"):
            for size in ("10KB", "1MB"):
                a, b = r.get((doc, size, d_r)), p.get((doc, size, d_p))
                if a and b:
                    print(f"  {label} {doc:<8} {size:<5} {a:8.1f} / {b:6.2f} MB/s = {a/b:6.1f}x  {verdict(a/b, 10)}")
    if kv.get("big_bytes"):
        mib = 1 << 20
        size = int(kv["big_bytes"])
        print(f"{size/mib:.0f} MiB dossier document ({size} B), translated once, whole file in memory:")
        for d in ("x2j", "j2x"):
            if kv.get(f"{d}_rss_kb"):
                rss = int(kv[f"{d}_rss_kb"]) * 1024
                inb = int(kv[f"{d}_in"])
                outb = int(kv[f"{d}_out"])
                read = int(kv.get(f"{d}_after_read_kb", "0")) * 1024
                name = "xml->json" if d == "x2j" else "json->xml"
                print(f"  lienthong {name}: input {inb/mib:.1f} MiB -> output {outb/mib:.1f} MiB in {kv[d+'_s']} s"
                      f" ({kv[d+'_mbps']} MB/s); peak RSS {rss/mib:.0f} MiB = {rss/inb:.2f}x input"
                      f" (after reading the file: {read/mib:.0f} MiB; engine + output: {(rss-read)/mib:.0f} MiB"
                      f" = {(rss-read)/inb:.2f}x input)")
        if kv.get("py_rss_kb"):
            rss = int(kv["py_rss_kb"]) * 1024
            print(f"  xmltodict xml->json (reference): {kv['py_s']} s ({kv['py_mbps']} MB/s); peak RSS {rss/mib:.0f} MiB"
                  f" = {rss/size:.2f}x input")
        elif kv.get("py_note"):
            print(f"  xmltodict xml->json (reference): {kv['py_note']}")
    if kv.get("other_busy"):
        print(f"Noise: {kv['other_busy']}")
    print("================================================================================")

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "rates":
        rates(sys.argv[2], sys.argv[3])
    elif mode == "big":
        big(sys.argv[2])
    else:
        summary(sys.argv[2], sys.argv[3], sys.argv[4])
PY

# ---------------------------------------------------------------- 1. Rust, same process
echo
echo "== 1. quick-xml raw events vs lienthong::translate (benches/translate.rs)"
[ -n "$OTHER" ] && T0="$(cpu_ticks)"
TRANSLATE_BENCH_DIR="$WORK/docs" "${PIN[@]}" "$BIN" --bench "${QUICK[@]}"

# ---------------------------------------------------------------- 2. Python xmltodict
echo
echo "== 2. Python xmltodict on the same files"
"${PIN[@]}" python3 "$WORK/pybench.py" rates "$WORK/docs" "$WORK/py.tsv"
BUSY=""
[ -n "$OTHER" ] && BUSY="$(busy_since "$T0")" && echo "# cpu$OTHER (not pinned) was busy $BUSY of the time during sections 1-2"

# ---------------------------------------------------------------- 3. big document, peak RSS
KV="$WORK/big.kv"
: > "$KV"
# field NAME from "key=value ..." line
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
maxrss_kb() { sed -n 's/.*Maximum resident set size (kbytes): *//p' "$1"; }
if [ "$BIG_MB" -gt 0 ]; then
  echo
  echo "== 3. ${BIG_MB} MiB document: one translation each way, peak RSS"
  "$BIN" --big "$BIG_MB" "$WORK/big.xml"
  echo "big_bytes=$(stat -c %s "$WORK/big.xml")" >> "$KV"
  for d in x2j j2x; do
    if [ "$d" = x2j ]; then args=(--x2j "$WORK/big.xml" "$WORK/big.json"); else args=(--j2x "$WORK/big.json"); fi
    if [ ${#TIME[@]} -gt 0 ]; then
      line="$("${TIME[@]}" -o "$WORK/time-$d.txt" "${PIN[@]}" "$BIN" "${args[@]}")"
      rss="$(maxrss_kb "$WORK/time-$d.txt")"
      src="/usr/bin/time -v maxrss"
    else
      line="$("${PIN[@]}" "$BIN" "${args[@]}")"
      rss="$(field "$line" vmhwm_end_kb)"
      src="VmHWM"
    fi
    echo "$line"
    echo "  peak RSS ($src): $rss kB (VmHWM at exit: $(field "$line" vmhwm_end_kb) kB)"
    {
      echo "${d}_rss_kb=$rss"
      echo "${d}_in=$(field "$line" in_bytes)"
      echo "${d}_out=$(field "$line" out_bytes)"
      echo "${d}_s=$(field "$line" translate_s)"
      echo "${d}_mbps=$(field "$line" mbps)"
      echo "${d}_after_read_kb=$(field "$line" vmhwm_after_read_kb)"
    } >> "$KV"
  done
  rm -f "$WORK/big.json"
  echo "-- xmltodict on the same file (parse + json.dumps), limit ${PY_BIG_TIMEOUT}s"
  set +e
  line="$(timeout "$PY_BIG_TIMEOUT" "${PIN[@]}" python3 "$WORK/pybench.py" big "$WORK/big.xml")"
  rc=$?
  set -e
  if [ $rc -eq 0 ]; then
    echo "$line"
    {
      echo "py_rss_kb=$(field "$line" maxrss_kb)"
      echo "py_s=$(field "$line" translate_s)"
      echo "py_mbps=$(field "$line" mbps)"
    } >> "$KV"
  elif [ $rc -eq 124 ]; then
    echo "  skipped: did not finish within ${PY_BIG_TIMEOUT}s"
    echo "py_note=skipped, did not finish within ${PY_BIG_TIMEOUT}s" >> "$KV"
  else
    echo "  failed (exit $rc)"
    echo "py_note=failed (exit $rc)" >> "$KV"
  fi
  rm -f "$WORK/big.xml"
fi

[ -n "$BUSY" ] && echo "other_busy=cpu$OTHER busy $BUSY of the time during sections 1-2 (should be near 0%)" >> "$KV"
python3 "$WORK/pybench.py" summary "$WORK/docs/results.tsv" "$WORK/py.tsv" "$KV"
