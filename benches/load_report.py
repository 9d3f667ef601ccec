#!/usr/bin/env python3
"""Turns a benches/load.sh output folder into summary tables (Markdown, stdout) and
load.png. Medians over repetitions with min-max spreads. Each point is a kiln-bench
JSON report (throughput, latency, the server's CPU per request from its process
tree) and the server's statistics extension before and after it (inference count /
execution count = the batch it formed; n/a for MLServer, which has none); the
in-process limit (samples/s and CPU per sample) is interpolated at that batch size
from limit.jsonl.

    load_report.py OUT_DIR
"""
import glob
import json
import os
import re
import statistics
import sys

TARGETS = ["kiln-grpc", "kiln-http", "kiln-grpc-nobatch", "mlserver-grpc", "triton-grpc"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt="{:,.0f}"):
    if not xs:
        return "n/a"
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def load_points(d):
    pts = {}
    for f in sorted(glob.glob(os.path.join(d, "*__*__c*__r*.json"))):
        m = re.match(r"(.+)__(.+)__c(\d+)__r(\d+)\.json", os.path.basename(f))
        target, model, c = m.group(1), m.group(2).replace("_nobatch", ""), int(m.group(3))
        r = json.load(open(f))
        n0, e0, n1, e1 = map(int, open(f[:-5] + ".stats").read().split())
        batch = (n1 - n0) / (e1 - e0) if e1 > e0 else None
        p = pts.setdefault((model, target, c),
                           {"tput": [], "p50": [], "p90": [], "p99": [], "batch": [], "cpu": [], "failed": 0})
        p["tput"].append(r["throughput_per_sec"])
        for q in ("p50", "p90", "p99"):
            p[q].append(r["latency"][f"{q}_us"])
        if r.get("server_cpu"):
            p["cpu"].append(r["server_cpu"]["us_per_request"])
        p["failed"] += r["failed"]
        if batch:
            p["batch"].append(batch)
    return pts


def load_limit(d):
    """{(model, batch): (samples/s, CPU µs per sample)}, medians over reps."""
    lim = {}
    path = os.path.join(d, "limit.jsonl")
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            lim.setdefault((r["model"], r["batch"]), []).append((r["samples_per_s"], r["cpu_us_per_sample"]))
    return {k: (med([x for x, _ in v]), med([y for _, y in v])) for k, v in lim.items()}


def limit_at(lim, model, batch):
    """In-process (samples/s, CPU µs per sample) at a (fractional) batch size,
    interpolated linearly."""
    sizes = sorted(b for (m, b) in lim if m == model)
    if not sizes or batch is None:
        return None
    if batch <= sizes[0]:
        return lim[(model, sizes[0])]
    for lo, hi in zip(sizes, sizes[1:]):
        if lo <= batch <= hi:
            t = (batch - lo) / (hi - lo)
            return tuple(a * (1 - t) + b * t for a, b in zip(lim[(model, lo)], lim[(model, hi)]))
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
        print("| server | c | infer/s (median, min-max) | p50 µs | p90 µs | p99 µs | server CPU µs/inference "
              "(median, min-max) | batch | in-process at that batch: samples/s, CPU µs/sample | of in-process "
              "throughput | CPU / in-process |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for target in TARGETS:
            for c in concs:
                p = pts.get((model, target, c))
                if not p:
                    continue
                b = med(p["batch"]) if p["batch"] else None
                limit = limit_at(lim, model, b) if b else None
                cpu = med(p["cpu"]) if p["cpu"] else None
                inproc = f"{limit[0]:,.0f}, {limit[1]:.1f}" if limit else "n/a"
                eff = f"{100 * med(p['tput']) / limit[0]:.0f}%" if limit else "n/a"
                ratio = f"{cpu / limit[1]:.2f}x" if limit and cpu else "n/a"
                failed = f" ({p['failed']} failed)" if p["failed"] else ""
                print(f"| {target} | {c} | {spread(p['tput'])}{failed} | {med(p['p50']):,.0f} | {med(p['p90']):,.0f} | "
                      f"{med(p['p99']):,.0f} | {spread(p['cpu'], '{:.1f}')} | {f'{b:.1f}' if b else 'n/a'} | "
                      f"{inproc} | {eff} | {ratio} |")
        print()
        sizes = sorted(b for (m, b) in lim if m == model)
        if sizes:
            print("In-process ONNX Runtime (median over reps) by batch size, samples/s and CPU µs per sample: " +
                  ", ".join(f"{b}: {lim[(model, b)][0]:,.0f} / {lim[(model, b)][1]:.1f}" for b in sizes) + "\n")

    print("### Targets\n")
    def get(model, target, c, key="tput"):
        p = pts.get((model, target, c))
        return med(p[key]) if p and p[key] else None
    p50 = get("mlp_tiny", "kiln-grpc", 1, "p50")
    if p50 is not None:
        print(f"- Tiny MLP, gRPC, concurrency 1: p50 {p50:,.0f} µs")
    cpu = get("mlp_tiny", "kiln-grpc", 16, "cpu")
    if cpu is not None:
        print(f"- Tiny MLP, gRPC, concurrency 16: {cpu:.1f} µs of server CPU per inference (target ≤ 20): "
              f"{'met' if cpu <= 20 else 'MISSED'}")
    p = pts.get(("mlp_heavy", "kiln-grpc", 16))
    if p and p["batch"] and p["cpu"]:
        b = med(p["batch"])
        limit = limit_at(lim, "mlp_heavy", b)
        if limit:
            r = med(p["cpu"]) / limit[1]
            print(f"- Heavy MLP, gRPC, concurrency 16: {med(p['cpu']):.1f} µs of server CPU per inference at batch "
                  f"{b:.1f}, in-process {limit[1]:.1f} µs per sample: {r:.2f}x (target ≤ 1.3x): "
                  f"{'met' if r <= 1.3 else 'MISSED'}")
    top = max(concs) if concs else None
    for peer in ("mlserver-grpc", "triton-grpc"):
        for model in models:
            k, o = get(model, "kiln-grpc", top), get(model, peer, top)
            kc, oc = get(model, "kiln-grpc", top, "cpu"), get(model, peer, top, "cpu")
            if k and o and kc and oc:
                print(f"- {model}, concurrency {top}: kiln-grpc {k:,.0f} infer/s = {k / o:.1f}x {peer}'s {o:,.0f}; "
                      f"server CPU per inference {kc:.1f} µs against {oc:.1f} µs ({oc / kc:.1f}x less)")
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
    fig, axes = plt.subplots(3, len(models), figsize=(6 * len(models), 12), squeeze=False)
    for i, model in enumerate(models):
        ax_t, ax_l, ax_c = axes[0][i], axes[1][i], axes[2][i]
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
            cc = [c for c in cs if pts[(model, target, c)]["cpu"]]
            ax_c.plot(cc, [med(pts[(model, target, c)]["cpu"]) for c in cc], marker="o", color=color, label=target)
        sizes = sorted(b for (m, b) in lim if m == model)
        if sizes:
            ax_t.axhline(lim[(model, sizes[-1])][0], color="grey", linestyle="--",
                         label=f"in-process ORT, batch {sizes[-1]}")
            ax_c.axhline(lim[(model, sizes[-1])][1], color="grey", linestyle="--",
                         label=f"in-process ORT, batch {sizes[-1]}")
            ax_c.axhline(lim[(model, sizes[0])][1], color="grey", linestyle=":",
                         label=f"in-process ORT, batch {sizes[0]}")
        for ax in (ax_t, ax_l, ax_c):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concs, [str(c) for c in concs])
            ax.set_xlabel("concurrency (kiln-bench, closed loop)")
            ax.grid(True, alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("inferences/s")
        ax_t.set_title(f"{model}: throughput")
        ax_l.set_yscale("log")
        ax_l.set_ylabel("latency µs")
        ax_l.set_title(f"{model}: latency")
        ax_c.set_yscale("log")
        ax_c.set_ylabel("server CPU µs per inference")
        ax_c.set_title(f"{model}: CPU per inference")
        ax_t.legend(fontsize=7)
        ax_l.legend(fontsize=6)
        ax_c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "load.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])
