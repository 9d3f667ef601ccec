"""Markdown tables from benches/gpu_load.sh's output folder.

    python3 benches/gpu_report.py OUT_DIR

Per model: Kiln over gRPC at each concurrency (median over repetitions, min-max of
infer/s; latencies are medians of perf_analyzer's per-repetition percentiles), the
mean batch Kiln formed, the GPU utilisation NVML reported while the point ran, and
the in-process runtime on the same GPU: N threads of one-row calls, and one thread
with batches of N rows.
"""

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
served = list(csv.DictReader(open(out / "served.csv")))
inproc = list(csv.DictReader(open(out / "inprocess.csv")))
util = []
for line in open(out / "util.csv"):
    t, _, u = line.strip().partition(",")
    if u:
        util.append((float(t), float(u)))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


print("```")
print(open(out / "machine.txt").read().strip())
print("```")
print()
limit = defaultdict(list)
for r in inproc:
    limit[(r["model"], r["mode"], int(r["n"]))].append(r)
for model in dict.fromkeys(r["model"] for r in served):
    rows = [r for r in served if r["model"] == model]
    print(f"#### {model}")
    print()
    print("| concurrency | Kiln infer/s (median, min-max) | p50 µs | p90 µs | p99 µs | avg batch | GPU util | in-process, N threads × 1 row: samples/s (p50 µs) | in-process, 1 thread × N rows: samples/s (p50 µs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in sorted({int(r["concurrency"]) for r in rows}):
        pts = [r for r in rows if int(r["concurrency"]) == c]
        ips = [float(r["infer_per_s"]) for r in pts]
        us = [u for t, u in util if any(float(r["start"]) <= t <= float(r["end"]) for r in pts)]

        def lim(mode):
            ls = limit.get((model, mode, c), [])
            if not ls:
                return "n/a"
            return f"{fmt(med([float(x['samples_per_s']) for x in ls]))} ({fmt(med([float(x['p50_ms']) * 1000 for x in ls]))})"

        print(
            f"| {c} | {fmt(med(ips))} ({fmt(min(ips))}-{fmt(max(ips))}) "
            f"| {fmt(med([float(r['p50_us']) for r in pts]))} | {fmt(med([float(r['p90_us']) for r in pts]))} "
            f"| {fmt(med([float(r['p99_us']) for r in pts]))} | {med([float(r['avg_batch']) for r in pts]):.1f} "
            f"| {fmt(100 * med(us)) + '%' if us else 'n/a'} | {lim('threads')} | {lim('batch')} |"
        )
    print()
