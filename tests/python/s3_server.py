"""A real S3 server for the tests (moto's server mode on 127.0.0.1), the boto3
client that fills it, and a faulty proxy in front of it for the failures a real
network brings (an object gone between listing and download, a transfer cut
short, a slow answer)."""
import http.client
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time

import boto3

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kiln-test", "AWS_SECRET_ACCESS_KEY": "kiln-test-secret"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, why):
    """Until something listens on 127.0.0.1:port; fails (saying `why()`) if `proc`
    exits first or 30 s pass."""
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline and proc.poll() is None, why()
            time.sleep(0.1)


class S3Server:
    """moto_server on a free port; `log` holds its access log (one line per request)."""

    def __init__(self, env=None):
        self.port = free_port()
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(self.port)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})},
        )
        self.log = []
        threading.Thread(target=lambda: [self.log.append(l) for l in self.proc.stderr], daemon=True).start()
        wait_for_port(self.port, self.proc, lambda: "".join(self.log))

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, **keys):
        keys = keys or {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    def upload_tree(self, folder, bucket, prefix, skip=()):
        """Every file under `folder` to s3://bucket/prefix/<its path>."""
        s3 = self.client()
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d not in skip]
            for f in files:
                path = os.path.join(root, f)
                key = "/".join(p for p in (prefix, os.path.relpath(path, folder)) if p)
                s3.upload_file(path, bucket, key)

    def object_gets(self, bucket, key_prefix=""):
        """Object GETs the server answered under s3://bucket/key_prefix (not listings)."""
        pattern = re.compile(rf'"GET /{re.escape(bucket)}/{re.escape(key_prefix)}[^? ]* HTTP')
        return sum(1 for l in list(self.log) if pattern.search(l))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class FaultyProxy:
    """Forwards to an S3 server, but for object GETs whose key matches a rule:
    `vanish` deletes the object first (it was listed, then it is gone), `truncate`
    sends half of the body under the full Content-Length and hangs up, `delay`
    waits that many seconds before answering."""

    def __init__(self, s3: S3Server):
        self.s3 = s3
        self.rules = {}  # key regex -> ("vanish" | "truncate" | ("delay", secs))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.forward(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def rule_for(self, method, path):
        if method != "GET" or "?" in path:
            return None
        for pattern, rule in self.rules.items():
            if re.search(pattern, path):
                return rule
        return None

    def forward(self, h):
        rule = self.rule_for(h.command, h.path)
        if rule == "vanish":
            bucket, key = h.path.lstrip("/").split("/", 1)
            self.s3.client().delete_object(Bucket=bucket, Key=key)
        if isinstance(rule, tuple) and rule[0] == "delay":
            time.sleep(rule[1])
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.s3.port, timeout=30)
        upstream.request(h.command, h.path, body=body, headers=dict(h.headers))
        answer = upstream.getresponse()
        data = answer.read()
        h.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if rule == "truncate":
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        if h.command != "HEAD":
            h.wfile.write(data)

    def stop(self):
        self.server.shutdown()


class Silent:
    """A TCP port that takes connections and never answers: an endpoint that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def stop(self):
        self.sock.close()
        for c in self.held:
            c.close()
