#!/usr/bin/env python3
"""Turns a benches/load.sh output folder into summary tables (Markdown, stdout) and
load.png. Medians over repetitions with min-max spreads; the average batch size is
the server's own inference count / execution count as perf_analyzer reports it
(Triton statistics extension); the in-process limit is interpolated at that batch
size from limit.jsonl.

    load_report.py OUT_DIR
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

TARGETS = ["kiln-grpc", "kiln-http", "kiln-grpc-nobatch", "kiln-grpc-8rows", "mlserver-grpc"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt="{:,.0f}"):
    if not xs:
        return "n/a"
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def load_points(d):
    pts = {}
    for f in sorted(glob.glob(os.path.join(d, "*__*__c*__r*.csv"))):
        m = re.match(r"(.+)__(.+)__c(\d+)__r(\d+)\.csv", os.path.basename(f))
        target, model, c = m.group(1), m.group(2).replace("_nobatch", ""), int(m.group(3))
        rows = list(csv.DictReader(open(f)))
        if not rows:
            continue
        r = rows[-1]
        log = open(f[:-4] + ".log", errors="replace").read()
        inf = re.search(r"Server:\s*\n\s*Inference count: (\d+)\s*\n\s*Execution count: (\d+)", log)
        batch = int(inf.group(1)) / int(inf.group(2)) if inf and int(inf.group(2)) > 0 else None
        p = pts.setdefault((model, target, c), {"tput": [], "p50": [], "p90": [], "p99": [], "batch": []})
        p["tput"].append(float(r["Inferences/Second"]))
        for q in ("p50", "p90", "p99"):
            p[q].append(float(r[f"{q} latency"]))
        if batch:
            p["batch"].append(batch)
    return pts


def load_limit(d):
    lim = {}
    path = os.path.join(d, "limit.jsonl")
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            lim.setdefault((r["model"], r["batch"]), []).append(r["samples_per_s"])
    return {k: med(v) for k, v in lim.items()}


def limit_at(lim, model, batch):
    """In-process samples/s at a (fractional) batch size, interpolated linearly."""
    sizes = sorted(b for (m, b) in lim if m == model)
    if not sizes or batch is None:
        return None
    if batch <= sizes[0]:
        return lim[(model, sizes[0])]
    for lo, hi in zip(sizes, sizes[1:]):
        if lo <= batch <= hi:
            t = (batch - lo) / (hi - lo)
            return lim[(model, lo)] * (1 - t) + lim[(model, hi)] * t
    return lim[(model, sizes[-1])]


def main(d):
    pts = load_points(d)
    lim = load_limit(d)
    if os.path.exists(os.path.join(d, "machine.txt")):
        print(open(os.path.join(d, "machine.txt")).read().strip().replace("\n", "  \n"))
        print()
    models = sorted({m for (m, _, _) in pts}, key=lambda m: (m != "mlp_tiny", m))
    concs = sorted({c for (_, _, c) in pts})
    for model in models:
        print(f"### {model}\n")
        print("| server | concurrency | infer/s (median, min-max) | p50 µs | p90 µs | p99 µs | avg batch | in-process limit at that batch, samples/s | of limit |")
        print("|---|---|---|---|---|---|---|---|---|")
        for target in TARGETS:
            for c in concs:
                p = pts.get((model, target, c))
                if not p:
                    continue
                b = med(p["batch"]) if p["batch"] else None
                limit = limit_at(lim, model, b) if b else None
                eff = f"{100 * med(p['tput']) / limit:.0f}%" if limit else "n/a"
                print(f"| {target} | {c} | {spread(p['tput'])} | {med(p['p50']):,.0f} | {med(p['p90']):,.0f} | "
                      f"{med(p['p99']):,.0f} | {f'{b:.1f}' if b else 'n/a'} | {f'{limit:,.0f}' if limit else 'n/a'} | {eff} |")
        print()
        sizes = sorted(b for (m, b) in lim if m == model)
        if sizes:
            print("In-process ONNX Runtime (median over reps), samples/s by batch size: " +
                  ", ".join(f"{b}: {lim[(model, b)]:,.0f}" for b in sizes) + "\n")

    print("### Targets\n")
    def get(model, target, c, key="tput"):
        p = pts.get((model, target, c))
        return med(p[key]) if p and p[key] else None
    top = max(concs) if concs else None
    p50 = get("mlp_tiny", "kiln-grpc", 1, "p50")
    if p50 is not None:
        print(f"- Tiny MLP, gRPC, concurrency 1: p50 {p50:,.0f} µs (target ≤ 200 µs): {'met' if p50 <= 200 else 'MISSED'}")
    mls = get("mlp_tiny", "mlserver-grpc", top)
    for t in ("kiln-grpc", "kiln-http"):
        k = get("mlp_tiny", t, top)
        if k and mls:
            print(f"- Tiny MLP, concurrency {top}, {t}: {k:,.0f} infer/s = {k / mls:.1f}x MLServer's {mls:,.0f} (target ≥ 10x): {'met' if k >= 10 * mls else 'MISSED'}")
    for t in ("kiln-grpc", "kiln-http", "kiln-grpc-8rows"):
        p = pts.get(("mlp_heavy", t, top))
        if p and p["batch"]:
            b = med(p["batch"])
            limit = limit_at(lim, "mlp_heavy", b)
            k = med(p["tput"])
            if limit:
                print(f"- Heavy MLP, concurrency {top}, {t}: {k:,.0f} samples/s at average batch {b:.1f} = {100 * k / limit:.0f}% of in-process {limit:,.0f} (target ≥ 85%): {'met' if k >= 0.85 * limit else 'MISSED'}")
    on, off = get("mlp_heavy", "kiln-grpc", top), get("mlp_heavy", "kiln-grpc-nobatch", top)
    if on and off:
        print(f"- Heavy MLP, concurrency {top}, gRPC: batching on {on:,.0f} vs off {off:,.0f} infer/s: gain {on / off:.2f}x")
    plot(d, pts, lim, models, concs)


def plot(d, pts, lim, models, concs):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib missing: no plot)")
        return
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for i, model in enumerate(models):
        ax_t, ax_l = axes[0][i], axes[1][i]
        for k, target in enumerate(TARGETS):
            cs = [c for c in concs if (model, target, c) in pts]
            if not cs:
                continue
            color = f"C{k}"
            ax_t.plot(cs, [med(pts[(model, target, c)]["tput"]) for c in cs], marker="o", color=color,
                      label=target)
            ax_l.plot(cs, [med(pts[(model, target, c)]["p50"]) for c in cs], marker="o", color=color,
                      label=f"{target} p50")
            ax_l.plot(cs, [med(pts[(model, target, c)]["p99"]) for c in cs], marker="x", linestyle=":",
                      color=color, label=f"{target} p99")
        sizes = sorted(b for (m, b) in lim if m == model)
        if sizes:
            ax_t.axhline(lim[(model, sizes[-1])], color="grey", linestyle="--",
                         label=f"in-process ORT, batch {sizes[-1]}")
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concs, [str(c) for c in concs])
            ax.set_xlabel("concurrency (perf_analyzer)")
            ax.grid(True, alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("inferences/s")
        ax_t.set_title(f"{model}: throughput")
        ax_l.set_yscale("log")
        ax_l.set_ylabel("latency µs")
        ax_l.set_title(f"{model}: latency")
        ax_t.legend(fontsize=7)
        ax_l.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "load.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])
