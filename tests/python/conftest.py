"""Starts the real kiln binary for the Python client tests."""
import os
import re
import subprocess
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "target", "release", "kiln"))


class Kiln:
    def __init__(self, repo, extra=()):
        self.proc = subprocess.Popen(
            [KILN, "--model-repository", repo, "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", *extra],
            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.log = []
        self.http = self.grpc = None
        deadline = time.time() + 120
        for line in self.proc.stderr:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            self.log.append(line)
            m = re.search(r"(HTTP|gRPC) listening on [\d.]+:(\d+)", line)
            if m:
                setattr(self, "http" if m.group(1) == "HTTP" else "grpc", int(m.group(2)))
            if "model repository loaded" in line or time.time() > deadline:
                break
        assert self.http and self.grpc, "".join(self.log)
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [self.log.append(l) for l in self.proc.stderr], daemon=True).start()

    @property
    def http_url(self):
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self):
        return f"127.0.0.1:{self.grpc}"

    def backend_of(self, model):
        text = "".join(self.log)
        m = re.search(rf'loaded model={model} version=\d+ backend="(\w+)"', text)
        return m and m.group(1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module", params=["onnxruntime", "tract"])
def kiln(request):
    """The example models served once with ONNX Runtime and once with tract only."""
    extra = [] if request.param == "onnxruntime" else ["--onnxruntime-lib", "/nonexistent/libonnxruntime.so"]
    k = Kiln("models", extra)
    k.backend = request.param
    yield k
    k.stop()


@pytest.fixture(scope="module")
def kiln_tests():
    """The test fixtures (tests/models), ONNX Runtime required."""
    k = Kiln("tests/models")
    yield k
    k.stop()
