#!/usr/bin/env python3
"""Summarises perf_analyzer CSV files (<proto>_c<conc>_r<rep>.csv) as a Markdown table:
medians over repetitions, with min-max spreads."""
import csv
import glob
import os
import re
import statistics
import sys


def main(d):
    rows = {}
    for f in sorted(glob.glob(os.path.join(d, "*_c*_r*.csv"))):
        m = re.match(r"(\w+)_c(\d+)_r(\d+)\.csv", os.path.basename(f))
        with open(f) as fh:
            for r in csv.DictReader(fh):
                rows.setdefault((m.group(1), int(m.group(2))), []).append(
                    (float(r["Inferences/Second"]), float(r["p50 latency"]), float(r["p90 latency"]), float(r["p99 latency"]))
                )
    if os.path.exists(os.path.join(d, "machine.txt")):
        print(open(os.path.join(d, "machine.txt")).read())
    print("| protocol | concurrency | reps | infer/s (median, min-max) | p50 µs | p90 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|")
    for (proto, c), vals in sorted(rows.items()):
        cols = list(zip(*vals))
        fmt = lambda xs: f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"
        print(f"| {proto} | {c} | {len(vals)} | {fmt(cols[0])} | {fmt(cols[1])} | {fmt(cols[2])} | {fmt(cols[3])} |")


if __name__ == "__main__":
    main(sys.argv[1])
