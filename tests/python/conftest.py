"""Starts the real kiln binary for the Python client tests."""
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time

import gevent.ssl
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient._plugin import InferenceServerClientPlugin

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "target", "release", "kiln"))


class Bearer(InferenceServerClientPlugin):
    """Sends an API key with every request of a tritonclient client (HTTP or gRPC)."""

    def __init__(self, key):
        self.key = key

    def __call__(self, request):
        request.headers["authorization"] = f"Bearer {self.key}"


def make_tls(folder):
    """A CA, a server certificate for localhost and 127.0.0.1, and a client
    certificate (CN=pytest), made with openssl; returns the folder."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Kiln test CA")
    for name, subject, ext in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=pytest", "extendedKeyUsage=clientAuth\n"),
    ):
        with open(os.path.join(folder, f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return folder


def key_entry(key_id, secret, scopes, extra=""):
    digest = hashlib.sha256(secret.encode()).hexdigest()
    quoted = ", ".join(f'"{s}"' for s in scopes)
    return f'[[key]]\nid = "{key_id}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n{extra}\n'


class Kiln:
    def __init__(self, repo, extra=(), tls=None, key=None, env=None, wait=True):
        """`env`: variables to add (None: to remove); `wait`: until the start-up
        load ends (else only until both ports listen)."""
        self.tls, self.key = tls, key
        env = {k: v for k, v in {**os.environ, "NO_COLOR": "1", **(env or {})}.items() if v is not None}
        self.proc = subprocess.Popen(
            [KILN, "--model-repository", repo, "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", *extra],
            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
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
            if not wait and self.http and self.grpc:
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

    def http_client(self, key=None):
        """A tritonclient HTTP client: over HTTPS with the server's key when it has
        them (`key`: another one; "": none)."""
        key = self.key if key is None else key
        if self.tls:
            ca = os.path.join(self.tls, "ca.pem")
            c = httpclient.InferenceServerClient(
                self.http_url, ssl=True, ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=ca))
        else:
            c = httpclient.InferenceServerClient(self.http_url)
        if key:
            c.register_plugin(Bearer(key))
        return c

    def grpc_client(self, key=None, cert=False):
        """A tritonclient gRPC client: over TLS with the server's key when it has them;
        `cert`: with the client certificate (mTLS)."""
        key = self.key if key is None else key
        if self.tls:
            path = lambda name: os.path.join(self.tls, name)
            extra = dict(private_key=path("client.key"), certificate_chain=path("client.pem")) if cert else {}
            c = grpcclient.InferenceServerClient(self.grpc_url, ssl=True, root_certificates=path("ca.pem"), **extra)
        else:
            c = grpcclient.InferenceServerClient(self.grpc_url)
        if key:
            c.register_plugin(Bearer(key))
        return c

    def json_log(self):
        """The log's JSON lines (with --log-format json), parsed."""
        return [json.loads(l) for l in list(self.log) if l.startswith("{")]

    def wait_for_log(self, match, timeout=5.0):
        """The first JSON log line for which `match` holds (waiting for it)."""
        deadline = time.time() + timeout
        while True:
            found = [v for v in self.json_log() if match(v)]
            if found or time.time() > deadline:
                assert found, "no such log line"
                return found[0]
            time.sleep(0.05)

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


SECURE_KEY = "pytest-secret-key"


def secure_kiln(repo, folder, extra=()):
    """Kiln over TLS (client certificates verified when sent) with API keys: one
    with every scope (SECURE_KEY), one for CN=pytest's certificate (infer, metrics)."""
    make_tls(folder)
    keys = os.path.join(folder, "keys.toml")
    with open(keys, "w") as f:
        f.write(key_entry("pytest", SECURE_KEY, ["infer", "admin", "metrics"]))
        f.write('[[key]]\nid = "pytest-cert"\nsubject = "CN=pytest"\nscopes = ["infer", "metrics"]\n')
    path = lambda name: os.path.join(folder, name)
    flags = ["--tls-cert", path("server.pem"), "--tls-key", path("server.key"), "--tls-client-ca", path("ca.pem"),
             "--tls-client-cert-optional", "true", "--api-keys", keys, *extra]
    return Kiln(repo, flags, tls=folder, key=SECURE_KEY)


def s3_kiln(s3, extra=(), bucket="models", prefix="repo", cache=None):
    """Kiln serving s3://bucket/prefix from `s3` (an S3Server), with a cache of its own."""
    from s3_server import CREDENTIALS
    cache = cache or tempfile.mkdtemp(prefix="kiln-cache-")
    flags = ["--storage-endpoint", s3.endpoint, "--model-cache-dir", cache, *extra]
    k = Kiln(f"s3://{bucket}/{prefix}", flags, env=CREDENTIALS)
    k.cache = cache
    return k


@pytest.fixture(scope="module", params=["onnxruntime", "tract", "secure", "s3"])
def kiln(request):
    """The example models served with ONNX Runtime, with tract only, with ONNX
    Runtime over TLS with API keys, and from a real S3 server (every client check
    passes through each)."""
    if request.param == "secure":
        folder = tempfile.mkdtemp(prefix="kiln-tls-")
        k = secure_kiln("models", folder)
        k.backend = "onnxruntime"
    elif request.param == "s3":
        from s3_server import S3Server
        s3 = S3Server()
        s3.client().create_bucket(Bucket="models")
        s3.upload_tree("models", "models", "repo", skip=("minilm",))
        k = s3_kiln(s3)
        k.backend = "onnxruntime"
        request.addfinalizer(s3.stop)
    else:
        extra = [] if request.param == "onnxruntime" else ["--onnxruntime-lib", "/nonexistent/libonnxruntime.so"]
        k = Kiln("models", extra)
        k.backend = request.param
    k.variant = request.param
    yield k
    k.stop()


@pytest.fixture(scope="module")
def kiln_tests():
    """The test fixtures (tests/models), ONNX Runtime required."""
    k = Kiln("tests/models")
    yield k
    k.stop()
