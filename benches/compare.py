#!/usr/bin/env python3
"""Summarises two or more rows of ../shared/bench/proxy-compare.sh results measured in one
run: median req/s and proxy CPU µs per request of each target, then the ratios of every
other target against the first one.   usage: compare.py RESULTS_DIR TARGET [TARGET...]"""
import csv, glob, statistics as st, sys

rows = []
for f in sorted(glob.glob(sys.argv[1] + "/*.tsv")):
    rows += list(csv.DictReader(open(f), delimiter="\t"))
targets = sys.argv[2:]

def med(t, k):
    return st.median(float(r[k]) for r in rows if r["target"] == t)

for t in targets:
    errs = sum(int(r["errors"]) + int(r["non2xx"]) for r in rows if r["target"] == t)
    print(f"{t:10} req/s {med(t, 'rps'):9.0f}  proxy CPU {med(t, 'cpu_us_per_req'):6.2f} us/req  errors {errs}")
base = targets[0]
for t in targets[1:]:
    print(f"{t} / {base}: req/s {med(t, 'rps') / med(base, 'rps'):.3f}x, "
          f"CPU per request {med(t, 'cpu_us_per_req') / med(base, 'cpu_us_per_req'):.3f}x")
