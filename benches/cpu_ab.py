#!/usr/bin/env python3
"""Server CPU per inference, configurations side by side: each configuration is
a Kiln server of its own (a binary, environment, extra flags, lines added to the
models' config.toml), all started at once on the benchmark models, and every
point is driven by kiln-bench in turn, configurations interleaved within each
repetition (the machine is shared and noisy: only figures of one run compare).

    .venv/bin/python benches/cpu_ab.py [--reps 3] [--seconds 4] [--models mlp_tiny]
        [--concurrency 1 16] [--protocol grpc] CONF [CONF ...]

A CONF is NAME followed by settings, separated by '|':
    base                                   target/release/kiln as it is
    mimalloc|bin=/tmp/other/kiln           another binary
    w1|env=KILN_IO_THREADS=1               an environment variable
    nospin|cfg=intra_op_spinning = false   a line for every model's config.toml
    x|flag=--some-flag=value               an extra command-line argument

Per point: throughput, p50/p99 (kiln-bench), the server's CPU per inference
(its whole process tree from /proc over the measured window, kiln-bench's
--server-pid) and the batch the server formed (its statistics extension).
Prints one line per measurement as it goes, then a table of medians (min-max).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
KILN = os.path.join(ROOT, "target", "release", "kiln")
BENCH = os.path.join(ROOT, "target", "release", "kiln-bench")
PY = os.path.join(ROOT, ".venv", "bin", "python")


def conf(spec):
    name, *settings = spec.split("|")
    c = {"name": name, "bin": KILN, "env": {}, "cfg": [], "flags": []}
    for s in settings:
        key, _, value = s.partition("=")
        if key == "bin":
            c["bin"] = os.path.abspath(value)
        elif key == "env":
            k, _, v = value.partition("=")
            c["env"][k] = v
        elif key == "cfg":
            c["cfg"].append(value)
        elif key == "flag":
            c["flags"].append(value)
        else:
            sys.exit(f"unknown setting {key!r} in {spec!r}")
    return c


def repository(folder, models, lines):
    """A repository with `models` (from models/ or the benchmark models), each
    with `lines` in its config.toml."""
    bench = os.path.join(folder, "bench-models")
    if not os.path.isdir(bench):
        subprocess.run([PY, os.path.join(ROOT, "scripts", "make_models.py"), "--bench-models", bench],
                       check=True, stdout=subprocess.DEVNULL)
    repo = tempfile.mkdtemp(dir=folder, prefix="repo-")
    for m in models:
        src = os.path.join(bench, m) if os.path.isdir(os.path.join(bench, m)) else os.path.join(ROOT, "models", m)
        shutil.copytree(src, os.path.join(repo, m))
        if lines:
            with open(os.path.join(repo, m, "config.toml"), "a") as f:
                f.write("\n" + "\n".join(lines) + "\n")
    return repo


def start(c, repo, log):
    cmd = [c["bin"], "--model-repository", repo, "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
           "--http-port", "0", "--grpc-port", "0", *c["flags"]]
    env = {**os.environ, "NO_COLOR": "1", **c["env"]}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        text = open(log.name).read()
        if "model repository loaded" in text:
            ports = {}
            for line in text.splitlines():
                for proto in ("HTTP", "gRPC"):
                    tag = f"{proto} listening on "
                    if tag in line:
                        ports[proto] = int(line.split(tag)[1].split()[0].rsplit(":", 1)[1].strip(",;"))
            return proc, ports["HTTP"], ports["gRPC"]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{c['name']} did not start:\n{open(log.name).read()[-3000:]}")


def batch_counts(http, model):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{model}/stats") as r:
        s = json.load(r)["model_stats"][0]
    return s["inference_count"], s["execution_count"]


def point(server, model, c, protocol, seconds, folder, connections):
    proc, http, grpc = server
    report = os.path.join(folder, "report.json")
    url = f"127.0.0.1:{grpc if protocol == 'grpc' else http}"
    n0, e0 = batch_counts(http, model)
    subprocess.run([BENCH, "-u", url, "-i", protocol, "-m", model, "--concurrency", str(c),
                    "--warmup-secs", "1", "--duration-secs", str(seconds), "--server-pid", str(proc.pid),
                    "--report", report, "--progress", "false", "--connections", str(connections)],
                   check=True, stdout=subprocess.DEVNULL, timeout=seconds * 4 + 60)
    n1, e1 = batch_counts(http, model)
    r = json.load(open(report))
    return {
        "infer_s": r["throughput_per_sec"],
        "p50": r["latency"]["p50_us"],
        "p99": r["latency"]["p99_us"],
        "cpu": r["server_cpu"]["us_per_request"],
        "batch": (n1 - n0) / max(e1 - e0, 1),
        "failed": r["failed"],
    }


def cell(values, fmt):
    m = statistics.median(values)
    return f"{fmt.format(m)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("confs", nargs="+")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--models", nargs="+", default=["mlp_tiny"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    ap.add_argument("--connections", type=int, default=1, help="kiln-bench's gRPC connections")
    args = ap.parse_args()
    confs = [conf(s) for s in args.confs]
    folder = tempfile.mkdtemp(prefix="kiln-cpu-ab-")
    servers = []
    try:
        for c in confs:
            repo = repository(folder, args.models, c["cfg"])
            log = open(os.path.join(folder, c["name"] + ".log"), "w")
            servers.append(start(c, repo, log))
        results = {}
        for rep in range(args.reps):
            for model in args.models:
                for conc in args.concurrency:
                    # Alternate the order between repetitions: whoever runs first in a rep
                    # is not always the same configuration.
                    order = list(zip(confs, servers))
                    if rep % 2:
                        order.reverse()
                    for c, server in order:
                        p = point(server, model, conc, args.protocol, args.seconds, folder, args.connections)
                        results.setdefault((model, conc, c["name"]), []).append(p)
                        print(f"rep={rep + 1} model={model} c={conc} conf={c['name']} " +
                              " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()),
                              flush=True)
        print()
        print(f"{args.protocol}, {args.reps} reps of {args.seconds:g} s, kiln-bench closed loop; "
              "median (min-max)")
        print()
        print("| model | c | configuration | infer/s | p50 µs | p99 µs | server CPU µs/inference | batch |")
        print("|---|---|---|---|---|---|---|---|")
        for (model, conc, name), ps in results.items():
            col = lambda k: [p[k] for p in ps]  # noqa: E731
            print(f"| {model} | {conc} | {name} | {cell(col('infer_s'), '{:,.0f}')} | {cell(col('p50'), '{:,.0f}')} "
                  f"| {cell(col('p99'), '{:,.0f}')} | {cell(col('cpu'), '{:.1f}')} | {cell(col('batch'), '{:.1f}')} |")
    finally:
        for proc, _, _ in servers:
            proc.terminate()
        for proc, _, _ in servers:
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
