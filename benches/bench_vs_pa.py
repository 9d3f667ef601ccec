"""kiln-bench against perf_analyzer on the same point: Kiln on the example
models, mlp_tiny over gRPC, closed loop at CONCURRENCY, interleaved ROUNDS
times. For each client: throughput, p50/p99 and the CPU it spent per request
(its own process's, all of it: warm-up and every trial counted, divided by the
inferences the server counted over its run), and the server's CPU per inference.

    .venv/bin/python benches/bench_vs_pa.py [ROUNDS] [CONCURRENCY]
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
KILN = os.path.join(ROOT, "target", "release", "kiln")
BENCH = os.path.join(ROOT, "target", "release", "kiln-bench")
PA = os.path.join(ROOT, ".venv", "bin", "perf_analyzer")
TICK = os.sysconf("SC_CLK_TCK")


def pa_env():
    import nvidia.cuda_runtime  # namespace package: no __file__
    lib = os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib")
    return {**os.environ, "LD_LIBRARY_PATH": lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")}


def tree_cpu(pid):
    """utime + stime of pid and its descendants, seconds."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = open(f"/proc/{p}/stat").read()
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return total / TICK


def inferences(http):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/mlp_tiny/stats") as r:
        return json.load(r)["model_stats"][0]["inference_count"]


def measured(cmd, env, server, http):
    """Runs a client; (its stdout, its CPU per request, server CPU per inference)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0, n0 = tree_cpu(server), inferences(http)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).stdout
    s1, n1 = tree_cpu(server), inferences(http)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = max(n1 - n0, 1)
    return out, client * 1e6 / n, (s1 - s0) * 1e6 / n


def main(rounds, c):
    http, grpc = 18700, 18701
    server = subprocess.Popen([KILN, "--model-repository", "models", "--http-port", str(http), "--grpc-port",
                               str(grpc), "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    time.sleep(3)
    rows = {"perf_analyzer": [], "kiln-bench": []}
    try:
        for _ in range(rounds):
            out, client, srv = measured(
                [PA, "-m", "mlp_tiny", "-u", f"127.0.0.1:{grpc}", "-i", "grpc", "--concurrency-range", str(c),
                 "--measurement-interval", "4000", "--stability-percentage", "100", "--max-trials", "3"],
                pa_env(), server.pid, http)
            thr = float(re.findall(r"Concurrency: \d+, throughput: ([\d.]+)", out)[-1])
            p50 = int(re.findall(r"p50 latency: (\d+)", out)[-1])
            p99 = int(re.findall(r"p99 latency: (\d+)", out)[-1])
            rows["perf_analyzer"].append((thr, p50, p99, client, srv))
            out, client, srv = measured(
                [BENCH, "-u", f"127.0.0.1:{grpc}", "-m", "mlp_tiny", "--concurrency", str(c), "--warmup-secs", "2",
                 "--duration-secs", "8", "--progress", "false"], os.environ, server.pid, http)
            thr = float(re.search(r"Throughput: ([\d.]+)", out).group(1))
            p50 = int(re.search(r"p50 latency: (\d+)", out).group(1))
            p99 = int(re.search(r"p99 latency: (\d+)", out).group(1))
            rows["kiln-bench"].append((thr, p50, p99, client, srv))
    finally:
        server.terminate()
        server.wait()
    print(f"mlp_tiny, gRPC, concurrency {c}, {rounds} interleaved rounds: median (min-max)")
    print("| client | infer/s | p50 us | p99 us | client CPU us/request | server CPU us/infer |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        cells = []
        for i in range(5):
            col = [r[i] for r in rs]
            cells.append(f"{statistics.median(col):.0f} ({min(col):.0f}-{max(col):.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 16)
