#!/usr/bin/env python3
"""Summarises benches/minilm_load.sh: medians (and min-max) over reps of served
sentences/s and latency per server, next to the in-process limit at batch =
concurrency. usage: minilm_report.py OUT_DIR"""
import csv
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
served = defaultdict(list)
for r in csv.DictReader(open(f"{out}/served.csv")):
    served[(r["server"], r["length"], int(r["concurrency"]))].append(r)
limit = defaultdict(list)
for r in csv.DictReader(open(f"{out}/inprocess.csv")):
    limit[(r["length"], int(r["batch"]))].append(r)


def med(rows, key):
    v = [float(r[key]) for r in rows]
    return statistics.median(v), min(v), max(v)


servers = sorted({k[0] for k in served}, key=lambda s: s != "kiln")
print("| text | c | in-process limit sent/s (batch = c) | " + " | ".join(
    f"{s} sent/s | {s} p50 ms | {s} p99 ms" for s in servers) + " | kiln / limit | kiln / " + " / ".join(s for s in servers if s != "kiln") + " |")
print("|---" * (3 + 3 * len(servers) + 2) + "|")
for length in ["short", "long"]:
    for c in [1, 8, 32]:
        lm = med(limit[(length, c)], "sentences_per_s")
        cells = [length, str(c), f"{lm[0]:.1f} ({lm[1]:.1f}-{lm[2]:.1f})"]
        tput = {}
        for s in servers:
            rows = served.get((s, length, c), [])
            if not rows:
                cells += ["-", "-", "-"]
                continue
            t, p50, p99 = med(rows, "sentences_per_s"), med(rows, "p50_ms"), med(rows, "p99_ms")
            tput[s] = t[0]
            cells += [f"{t[0]:.1f} ({t[1]:.1f}-{t[2]:.1f})", f"{p50[0]:.1f}", f"{p99[0]:.1f}"]
        k = tput.get("kiln")
        cells.append(f"{k / lm[0] * 100:.0f} %" if k else "-")
        cells.append(" / ".join(f"{k / tput[s]:.2f}x" for s in servers if s != "kiln" and s in tput and k) or "-")
        print("| " + " | ".join(cells) + " |")
