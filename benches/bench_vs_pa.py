"""kiln-bench against perf_analyzer on the same point: Kiln on the example
models (and the benchmark models), MODEL over gRPC, closed loop at CONCURRENCY,
interleaved ROUNDS times. For each client: throughput, p50/p99 and the CPU it
spent per request (its own process's, all of it: warm-up and every trial
counted, divided by the inferences the server counted over its run), and the
server's CPU per inference.

    .venv/bin/python benches/bench_vs_pa.py [ROUNDS] [CONCURRENCY] [MODEL] [pin]

With `pin`, the server runs on CPU 0 with one ONNX Runtime thread per model
(`intra_op_threads = 1`: the runtime's own pool would place a thread on every
core) and each client on CPU 1, so that neither client takes the server's core:
on a model whose compute makes the server the bottleneck (mlp_heavy), both
clients then measure the same server, which is how their agreement is shown.
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


def inferences(http, model):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]["inference_count"]


def measured(cmd, env, server, http, model):
    """Runs a client; (its stdout, its CPU per request, server CPU per inference)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0, n0 = tree_cpu(server), inferences(http, model)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).stdout
    s1, n1 = tree_cpu(server), inferences(http, model)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = max(n1 - n0, 1)
    return out, client * 1e6 / n, (s1 - s0) * 1e6 / n


def repository(pin):
    """models/ and the benchmark models, in a temporary folder; with `pin`, each
    model computes on one thread."""
    import shutil
    import tempfile
    repo = tempfile.mkdtemp(prefix="kiln-vs-pa-")
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "scripts", "make_models.py"),
                    "--bench-models", repo], check=True, stdout=subprocess.DEVNULL)
    shutil.copytree(os.path.join(ROOT, "models", "mlp_tiny"), os.path.join(repo, "mlp_tiny"), dirs_exist_ok=True)
    if pin:
        for model in os.listdir(repo):
            with open(os.path.join(repo, model, "config.toml"), "a") as f:
                f.write("\nintra_op_threads = 1\n")
    return repo


def main(rounds, c, model, pin):
    http, grpc = 18700, 18701
    server_cpu, client_cpu = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin else ([], [])
    server = subprocess.Popen(server_cpu + [KILN, "--model-repository", repository(pin), "--http-port", str(http),
                                            "--grpc-port", str(grpc), "--http-address", "127.0.0.1",
                                            "--grpc-address", "127.0.0.1"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    time.sleep(3)
    rows = {"perf_analyzer": [], "kiln-bench": []}
    try:
        for _ in range(rounds):
            out, client, srv = measured(
                client_cpu + [PA, "-m", model, "-u", f"127.0.0.1:{grpc}", "-i", "grpc", "--concurrency-range", str(c),
                 "--measurement-interval", "4000", "--stability-percentage", "100", "--max-trials", "3"],
                pa_env(), server.pid, http, model)
            thr = float(re.findall(r"Concurrency: \d+, throughput: ([\d.]+)", out)[-1])
            p50 = int(re.findall(r"p50 latency: (\d+)", out)[-1])
            p99 = int(re.findall(r"p99 latency: (\d+)", out)[-1])
            rows["perf_analyzer"].append((thr, p50, p99, client, srv))
            out, client, srv = measured(
                client_cpu + [BENCH, "-u", f"127.0.0.1:{grpc}", "-m", model, "--concurrency", str(c), "--warmup-secs", "2",
                 "--duration-secs", "8", "--progress", "false"], os.environ, server.pid, http, model)
            thr = float(re.search(r"Throughput: ([\d.]+)", out).group(1))
            p50 = int(re.search(r"p50 latency: (\d+)", out).group(1))
            p99 = int(re.search(r"p99 latency: (\d+)", out).group(1))
            rows["kiln-bench"].append((thr, p50, p99, client, srv))
    finally:
        server.terminate()
        server.wait()
    print(f"{model}, gRPC, concurrency {c}, {rounds} interleaved rounds{', server on CPU 0 and client on CPU 1' if pin else ''}: median (min-max)")
    print("| client | infer/s | p50 us | p99 us | client CPU us/request | server CPU us/infer |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        cells = []
        for i in range(5):
            col = [r[i] for r in rs]
            cells.append(f"{statistics.median(col):.0f} ({min(col):.0f}-{max(col):.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 16,
         sys.argv[3] if len(sys.argv) > 3 else "mlp_tiny", len(sys.argv) > 4 and sys.argv[4] == "pin")
