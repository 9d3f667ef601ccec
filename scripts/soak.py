#!/usr/bin/env python3
"""A soak of one Kiln process on 127.0.0.1: steady gRPC load from perf_analyzer, a hot
reload every 5 s (poll mode, the version's file rewritten), a canary share changed every
10 s through the traffic API, and a fresh HTTP connection for one request every 0.2 s.
Every interval it records the server's RSS, open file descriptors and threads, and the
interval's throughput and p99. It fails when, after the first interval (warm-up), RSS grows
by more than BOUND_MIB, or descriptors or threads grow beyond a few.

    scripts/soak.sh                          # 30 minutes, one-minute intervals
    DURATION_SECS=120 INTERVAL_SECS=20 scripts/soak.sh   # CI's short form

Environment: KILN_BIN (default target/release/kiln), DURATION_SECS (1800), INTERVAL_SECS
(60), BOUND_MIB (8), REPORT (a Markdown report to write), CONCURRENCY (4). Every loop is
bounded by DURATION_SECS; nothing leaves 127.0.0.1."""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    rss_kib = int(out["VmRSS"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib, fds, int(out["Threads"])


def main():
    kiln = os.environ.get("KILN_BIN", os.path.join(HERE, "target", "release", "kiln"))
    duration = float(os.environ.get("DURATION_SECS", 1800))
    interval = float(os.environ.get("INTERVAL_SECS", 60))
    bound_mib = float(os.environ.get("BOUND_MIB", 8))
    concurrency = int(os.environ.get("CONCURRENCY", 4))
    report = os.environ.get("REPORT")
    import nvidia.cuda_runtime  # perf_analyzer's CUDA runtime (it loads without a GPU)

    pa_env = dict(os.environ)
    pa_env["LD_LIBRARY_PATH"] = os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib")
    pa = os.path.join(os.path.dirname(sys.executable), "perf_analyzer")

    repo = tempfile.mkdtemp(prefix="kiln-soak-")
    src = os.path.join(HERE, "models", "mlp_tiny", "1", "model.onnx")
    for v in (1, 2):
        os.makedirs(os.path.join(repo, "m", str(v)))
        shutil.copyfile(src, os.path.join(repo, "m", str(v), "model.onnx"))
    with open(os.path.join(repo, "m", "config.toml"), "w") as f:
        f.write("version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 10\n")
    http_port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [kiln, "--model-repository", repo, "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--model-control-mode", "poll",
         "--repository-poll-secs", "1", "--repository-settle-secs", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    end = time.time() + duration
    stop = threading.Event()
    counts = {"reloads": 0, "traffic": 0, "churn": 0, "churn_failed": 0}

    def ready():
        try:
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
            c.request("GET", "/v2/health/ready")
            return c.getresponse().status == 200
        except OSError:
            return False

    t0 = time.time()
    while not ready():
        if time.time() - t0 > 60 or server.poll() is not None:
            sys.exit("kiln did not become ready")
        time.sleep(0.2)

    def reloads():
        while not stop.wait(5):
            tmp = os.path.join(repo, "m", "1", "model.onnx.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, os.path.join(repo, "m", "1", "model.onnx"))
            counts["reloads"] += 1

    def traffic():
        share = 10
        while not stop.wait(10):
            share = 20 if share == 10 else 10
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
            c.request("POST", "/v2/models/m/traffic", json.dumps({"canary_percent": share}))
            c.getresponse().read()
            c.close()
            counts["traffic"] += 1

    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})

    def churn():
        while not stop.wait(0.2):
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
                c.request("POST", "/v2/models/m/infer", body)
                ok = c.getresponse().status == 200
                c.close()
            except OSError:
                ok = False
            counts["churn"] += 1
            counts["churn_failed"] += 0 if ok else 1

    threads = [threading.Thread(target=f, daemon=True) for f in (reloads, traffic, churn)]
    for t in threads:
        t.start()
    data = os.path.join(repo, "in.json")
    with open(data, "w") as f:
        json.dump({"data": [{"INPUT0": [0.1 * i for i in range(16)]}]}, f)
    rows = []
    window_ms = int(max(interval / 4, 2) * 1000)
    try:
        while time.time() + interval <= end + 1:
            started = time.time()
            out = subprocess.run(
                [pa, "-m", "m", "-u", f"127.0.0.1:{grpc_port}", "-i", "grpc", "--concurrency-range", str(concurrency),
                 "--measurement-interval", str(window_ms), "--max-trials", "3", "--stability-percentage", "999",
                 "--input-data", data, "--percentile", "99"],
                env=pa_env, capture_output=True, text=True, timeout=interval * 3 + 60,
            ).stdout
            thr = re.findall(r"Concurrency: \d+, throughput: ([\d.]+)", out)
            p99 = re.findall(r"p99 latency: (\d+)", out)
            time.sleep(max(0.0, interval - (time.time() - started)))
            if server.poll() is not None:
                sys.exit("kiln exited during the soak")
            rss, fds, nthreads = proc_status(server.pid)
            rows.append({
                "t": round(time.time() - t0), "rss_kib": rss, "fds": fds, "threads": nthreads,
                "infer_s": float(thr[-1]) if thr else 0.0, "p99_us": int(p99[-1]) if p99 else 0,
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(repo, ignore_errors=True)
    if len(rows) < 3:
        sys.exit("too short to judge: at least 3 intervals are needed")
    base = rows[1]
    last = rows[-1]
    grown_mib = (last["rss_kib"] - base["rss_kib"]) / 1024
    failures = []
    if grown_mib > bound_mib:
        failures.append(f"RSS grew {grown_mib:.1f} MiB after warm-up (bound {bound_mib} MiB)")
    if last["fds"] > base["fds"] + 8:
        failures.append(f"open descriptors grew from {base['fds']} to {last['fds']}")
    if last["threads"] > base["threads"] + 4:
        failures.append(f"threads grew from {base['threads']} to {last['threads']}")
    if any(r["infer_s"] == 0 for r in rows):
        failures.append("an interval served nothing")
    if counts["churn_failed"]:
        failures.append(f"{counts['churn_failed']} of {counts['churn']} fresh-connection requests failed")
    summary = (
        f"{len(rows)} intervals of {interval:.0f} s; {counts['reloads']} reloads, {counts['traffic']} traffic "
        f"changes, {counts['churn']} fresh connections; RSS {base['rss_kib'] / 1024:.1f} -> "
        f"{last['rss_kib'] / 1024:.1f} MiB after warm-up ({grown_mib:+.1f} MiB, bound {bound_mib} MiB); "
        f"descriptors {base['fds']} -> {last['fds']}; threads {base['threads']} -> {last['threads']}"
    )
    print(summary)
    if report:
        with open(report, "w") as f:
            f.write(f"# Soak report\n\n{summary}\n\n")
            f.write("| t (s) | RSS (MiB) | open fds | threads | infer/s | p99 (µs) |\n|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['t']} | {r['rss_kib'] / 1024:.1f} | {r['fds']} | {r['threads']} | {r['infer_s']:.0f} | {r['p99_us']} |\n")
            f.write(f"\n{'FAILED: ' + '; '.join(failures) if failures else 'passed'}\n")
    if failures:
        sys.exit("soak failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
