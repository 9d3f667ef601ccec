#!/usr/bin/env python3
"""Summarises benches/minilm_load.sh: per text length, a table of each server's texts/s,
p50/p99 and server CPU per text (medians over reps, with the throughput's min-max), the
batch it formed where it has the statistics extension, the in-process limits at batch =
concurrency, and Kiln's ratio to the peers; and minilm.png (throughput and CPU per text
against concurrency). usage: minilm_report.py OUT_DIR"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
TARGETS = ["kiln", "kiln-candle", "mlserver", "triton"]
PEERS = ["mlserver", "triton"]

points = defaultdict(list)  # (target, length, c) -> [report + batch]
for path in glob.glob(os.path.join(out, "*__*__c*__r*.json")):
    target, length, c, _ = os.path.basename(path)[:-5].split("__")
    r = json.load(open(path))
    if r.get("requests", 0) == 0:
        continue
    try:
        b = [int(x) for x in open(path[:-5] + ".stats").read().split()]
        r["batch"] = (b[2] - b[0]) / (b[3] - b[1]) if b[3] > b[1] else None
    except (OSError, ValueError, IndexError):
        r["batch"] = None
    points[(target, length, int(c[1:]))].append(r)

limits = defaultdict(list)  # (engine, length, batch) -> [texts/s, cpu ms per text]
for line in open(os.path.join(out, "limit.jsonl")):
    r = json.loads(line)
    length = "short" if r["tokens"] <= 16 else "long"
    limits[(r["engine"], length, r["batch"])].append(r)


def med(values):
    return statistics.median(values) if values else None


def served(target, length, c):
    rows = points.get((target, length, c), [])
    if not rows:
        return None
    tput = [r["throughput_per_sec"] for r in rows]
    cpu = [r["server_cpu"]["us_per_request"] / 1e3 for r in rows if r.get("server_cpu")]
    return {
        "tput": med(tput), "lo": min(tput), "hi": max(tput),
        "p50": med([r["latency"]["p50_us"] / 1e3 for r in rows]),
        "p99": med([r["latency"]["p99_us"] / 1e3 for r in rows]),
        "cpu": med(cpu),
        "batch": med([r["batch"] for r in rows if r["batch"]]),
    }


def limit(engine, length, c):
    rows = limits.get((engine, length, c), [])
    if not rows:
        return None
    return med([r["texts_per_s"] for r in rows]), med([r["cpu_ms_per_text"] for r in rows])


concs = sorted({k[2] for k in points})
print(open(os.path.join(out, "machine.txt")).read())
for length, what in [("short", "12 tokens"), ("long", "128 tokens")]:
    print(f"\n#### {length} texts ({what}), one text per request\n")
    print("| c | server | texts/s (min-max) | p50 ms | p99 ms | server CPU ms/text | batch formed |")
    print("|---|---|---|---|---|---|---|")
    for c in concs:
        for t in TARGETS:
            s = served(t, length, c)
            if not s:
                continue
            batch = f"{s['batch']:.1f}" if s["batch"] else "-"
            cpu = f"{s['cpu']:.2f}" if s["cpu"] is not None else "-"
            print(f"| {c} | {t} | {s['tput']:.1f} ({s['lo']:.1f}-{s['hi']:.1f}) | {s['p50']:.1f} | "
                  f"{s['p99']:.1f} | {cpu} | {batch} |")
        for engine in ["ort", "torch"]:
            lm = limit(engine, length, c)
            if lm:
                print(f"| {c} | in-process {engine}, batch {c} | {lm[0]:.1f} | | | {lm[1]:.2f} | {c} |")
    print("\n| c | kiln / mlserver | kiln / triton | kiln / in-process ort | kiln / kiln-candle |")
    print("|---|---|---|---|---|")
    for c in concs:
        k = served("kiln", length, c)
        if not k:
            continue
        cells = []
        for t in PEERS + ["ort", "kiln-candle"]:
            if t == "ort":
                lm = limit("ort", length, c)
                cells.append(f"{k['tput'] / lm[0] * 100:.0f} %" if lm else "-")
            else:
                s = served(t, length, c)
                cells.append(f"{k['tput'] / s['tput']:.2f}x" if s else "-")
        print(f"| {c} | " + " | ".join(cells) + " |")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
fig, axes = plt.subplots(2, 2, figsize=(11, 8))
for col, length in enumerate(["short", "long"]):
    for t in TARGETS:
        xs = [c for c in concs if served(t, length, c)]
        if not xs:
            continue
        axes[0][col].plot(xs, [served(t, length, c)["tput"] for c in xs], marker="o", label=t)
        cpu = [(c, served(t, length, c)["cpu"]) for c in xs if served(t, length, c)["cpu"] is not None]
        axes[1][col].plot([c for c, _ in cpu], [v for _, v in cpu], marker="o", label=t)
    lm = [(c, limit("ort", length, c)) for c in concs if limit("ort", length, c)]
    axes[0][col].plot([c for c, _ in lm], [v[0] for _, v in lm], "k--", label="in-process ort (batch = c)")
    axes[0][col].set_title(f"MiniLM, {length} texts: texts/s")
    axes[1][col].set_title(f"MiniLM, {length} texts: server CPU ms per text")
    for row in (0, 1):
        axes[row][col].set_xscale("log", base=2)
        axes[row][col].set_xlabel("concurrency")
        axes[row][col].set_yscale("log")
        axes[row][col].grid(True, alpha=0.3)
        if axes[row][col].get_legend_handles_labels()[0]:
            axes[row][col].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "minilm.png"), dpi=90)
