"""Time to first ready: the example repository (models/, MiniLM included) served
from local disk, from a real S3 server (moto on 127.0.0.1) with an empty model
cache, and from the same server with the cache a previous start left. Each start
is timed from the process's launch to its "model repository loaded" log line
(readiness follows at once); the three kinds are interleaved, ROUNDS times.

    .venv/bin/python benches/storage_ready.py [ROUNDS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from s3_server import CREDENTIALS, S3Server  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "target", "release", "kiln"))


def time_to_loaded(repo, flags=(), env=None):
    start = time.monotonic()
    proc = subprocess.Popen([KILN, "--model-repository", repo, "--http-port", "0", "--grpc-port", "0", *flags],
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "NO_COLOR": "1", **(env or {})})
    try:
        for line in proc.stderr:
            if "model repository loaded" in line:
                assert "ready: true" in line, line
                return time.monotonic() - start
        raise RuntimeError("kiln exited before loading")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(rounds):
    s3 = S3Server()
    try:
        s3.client().create_bucket(Bucket="models")
        s3.upload_tree(os.path.join(ROOT, "models"), "models", "repo")
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(ROOT, "models"))
                   for f in fs)
        remote = ["--storage-endpoint", s3.endpoint]
        warm_cache = tempfile.mkdtemp(prefix="kiln-cache-warm-")
        time_to_loaded("s3://models/repo", [*remote, "--model-cache-dir", warm_cache], CREDENTIALS)
        times = {"local disk": [], "S3, empty cache": [], "S3, cache from a previous start": []}
        for _ in range(rounds):
            times["local disk"].append(time_to_loaded("models"))
            cold = tempfile.mkdtemp(prefix="kiln-cache-cold-")
            times["S3, empty cache"].append(
                time_to_loaded("s3://models/repo", [*remote, "--model-cache-dir", cold], CREDENTIALS))
            times["S3, cache from a previous start"].append(
                time_to_loaded("s3://models/repo", [*remote, "--model-cache-dir", warm_cache], CREDENTIALS))
        print(f"example repository: {size / 1e6:.1f} MB in {sum(len(fs) for _, _, fs in os.walk(os.path.join(ROOT, 'models')))} files; "
              f"{rounds} interleaved rounds")
        print("| source | median s | min s | max s |")
        print("|---|---|---|---|")
        for kind, ts in times.items():
            print(f"| {kind} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    finally:
        s3.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
