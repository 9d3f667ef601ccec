"""Models from a real S3 server (moto in server mode): versions swapped in while
requests run, in poll and explicit mode, with nothing downloaded twice (counted
in the server's own access log); every bad input the issue lists, each a clear
error that leaves what serves serving; KServe's single-model layout; and the
gRPC health and reflection services."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import boto3
import grpc
import pytest
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.utils import InferenceServerException

from conftest import KILN, ROOT, Kiln, s3_kiln
from s3_server import CREDENTIALS, FaultyProxy, S3Server, Silent, free_port

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "lifecycle")
BUCKET = "kiln-models"


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


@pytest.fixture()
def s3():
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def put(s3, key, body=b""):
    s3.client().put_object(Bucket=BUCKET, Key=f"repo/{key}", Body=body)


def answer(k, version=None):
    """(version, Y - X) of one request to model m over REST."""
    path = f"/v2/models/m/versions/{version}/infer" if version else "/v2/models/m/infer"
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]})
    req = urllib.request.Request(f"http://{k.http_url}{path}", body.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        out = json.load(r)
    return int(out["model_version"]), out["outputs"][0]["data"][0]


class Load:
    """Requests to m, one after another, from a thread: counts answers by version
    and every failure."""

    def __init__(self, k):
        self.k, self.by_version, self.failures, self.stop = k, {}, [], False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                v, _ = answer(self.k)
                self.by_version[v] = self.by_version.get(v, 0) + 1
            except Exception as e:  # any failed request fails the test
                self.failures.append(repr(e))

    def finish(self):
        self.stop = True
        self.thread.join(timeout=10)
        return self.by_version, self.failures


def wait_for(what, timeout=20.0):
    deadline = time.time() + timeout
    while not what():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def index(k):
    req = urllib.request.Request(f"http://{k.http_url}/v2/repository/index", b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_poll_mode_swaps_in_a_new_version_with_no_failed_request_and_nothing_downloaded_twice(s3):
    for key, body in (("m/1/model.onnx", fixture("add1.onnx")), ("m/1/READY", b""),
                      ("n/1/model.onnx", fixture("add3.onnx")), ("n/1/READY", b"")):
        put(s3, key, body)
    k = s3_kiln(s3, ["--model-control-mode", "poll", "--repository-poll-secs", "0.3",
                     "--repository-settle-secs", "0.3", "--repository-ready-marker", "READY"], bucket=BUCKET)
    try:
        assert answer(k) == (1, 1.0)
        load = Load(k)
        # A version without its ready marker is not a version yet, and is not fetched.
        put(s3, "m/2/model.onnx", fixture("add2.onnx"))
        time.sleep(1.5)
        assert answer(k) == (1, 1.0)
        assert s3.object_gets(BUCKET, "repo/m/2/") == 0
        # An upload cut off half-way (a multipart upload never completed) leaves no object.
        c = s3.client()
        up = c.create_multipart_upload(Bucket=BUCKET, Key="repo/m/3/model.onnx")
        c.upload_part(Bucket=BUCKET, Key="repo/m/3/model.onnx", UploadId=up["UploadId"], PartNumber=1,
                      Body=fixture("add3.onnx"))
        put(s3, "m/2/READY")
        wait_for(lambda: answer(k)[0] == 2)
        time.sleep(1.5)  # several more scans: nothing changes, nothing is fetched again
        by_version, failures = load.finish()
        assert failures == [], failures[:3]
        assert by_version.get(1) and by_version.get(2), by_version
        assert answer(k) == (2, 2.0)
        assert [(e["name"], e["version"], e["state"]) for e in index(k)] == [
            ("m", "2", "READY"), ("n", "1", "READY")]
        # Each object of each version was downloaded once; the other model not again.
        assert s3.object_gets(BUCKET, "repo/m/1/") == 2
        assert s3.object_gets(BUCKET, "repo/m/2/") == 2
        assert s3.object_gets(BUCKET, "repo/n/1/") == 2
        assert s3.object_gets(BUCKET, "repo/m/3/") == 0
    finally:
        k.stop()


def test_explicit_mode_loads_a_new_version_while_serving_and_the_cache_survives_a_restart(s3):
    put(s3, "m/config.toml", b"version_policy = { all = true }\n")
    put(s3, "m/1/model.onnx", fixture("add1.onnx"))
    k = s3_kiln(s3, ["--model-control-mode", "explicit", "--load-model", "m"], bucket=BUCKET)
    try:
        assert answer(k) == (1, 1.0)
        load = Load(k)
        put(s3, "m/2/model.onnx", fixture("add2.onnx"))
        httpclient.InferenceServerClient(k.http_url).load_model("m")
        wait_for(lambda: load.by_version.get(2))
        by_version, failures = load.finish()
        assert failures == [], failures[:3]
        assert answer(k, 1) == (1, 1.0) and answer(k, 2) == (2, 2.0)
        # The reload kept version 1 as it was: its file was fetched once.
        assert s3.object_gets(BUCKET, "repo/m/1/") == 1
        assert s3.object_gets(BUCKET, "repo/m/2/") == 1
    finally:
        k.stop()
    # A restart on the same cache finds both versions there.
    again = Kiln(f"s3://{BUCKET}/repo", ["--storage-endpoint", s3.endpoint, "--model-cache-dir", k.cache,
                                       "--model-control-mode", "explicit", "--load-model", "m"], env=CREDENTIALS)
    try:
        assert answer(again, 1) == (1, 1.0) and answer(again, 2) == (2, 2.0)
        assert s3.object_gets(BUCKET, "repo/m/1/") == 1 and s3.object_gets(BUCKET, "repo/m/2/") == 1
        assert "loading from the model cache" in "".join(again.log)
    finally:
        again.stop()


def test_failed_downloads_name_the_object_and_leave_what_serves(s3):
    proxy = FaultyProxy(s3)
    put(s3, "m/1/model.onnx", fixture("add1.onnx"))
    cache = tempfile.mkdtemp(prefix="kiln-cache-")
    k = Kiln(f"s3://{BUCKET}/repo", ["--storage-endpoint", proxy.endpoint, "--model-cache-dir", cache,
                                   "--model-cache-max-bytes", "4000", "--storage-retries", "1",
                                   "--model-control-mode", "explicit", "--load-model", "m"], env=CREDENTIALS)
    client = httpclient.InferenceServerClient(k.http_url)

    def load_fails(saying):
        with pytest.raises(InferenceServerException) as e:
            client.load_model("m")
        assert re.search(saying, str(e.value)), str(e.value)
        assert f"cannot download m/{version}" in str(e.value)
        assert answer(k) == (1, 1.0) and client.is_server_ready()
        return str(e.value)

    try:
        assert answer(k) == (1, 1.0)
        # A transfer cut short, every time: retried, then refused.
        version = 2
        proxy.rules[r"/m/2/model\.onnx$"] = "truncate"
        put(s3, "m/2/model.onnx", fixture("add2.onnx"))
        # (object_store resumes a cut transfer with a range request, cut again here)
        load_fails(r"the transfer stopped after \d+ of 98 bytes")
        assert "trying again" in "".join(k.log)
        # Deleted between listing and download.
        version = 3
        proxy.rules[r"/m/3/model\.onnx$"] = "vanish"
        put(s3, "m/3/model.onnx", fixture("add3.onnx"))
        load_fails("gone from the store")
        # Larger than the whole cache.
        version = 4
        put(s3, "m/4/model.onnx", fixture("add_slow.onnx"))
        load_fails("needs 9082 bytes but the model cache holds at most 4000")
        # The index says why, the metrics count it, and no half download is left.
        reasons = [e["reason"] for e in index(k) if e["name"] == "m" and e.get("version") == "4"]
        assert reasons and "model cache" in reasons[0], index(k)
        metrics = urllib.request.urlopen(f"http://{k.http_url}/metrics", timeout=10).read().decode()
        storage = sorted(l for l in metrics.splitlines() if l.startswith(("kiln_storage_downloads", "kiln_model_cache")))
        assert storage == [
            "kiln_model_cache_bytes 98",
            "kiln_model_cache_limit_bytes 4000",
            'kiln_storage_downloads_total{model="m",outcome="failed"} 3',
            'kiln_storage_downloads_total{model="m",outcome="ok"} 1',
        ], storage
        assert os.listdir(os.path.join(cache, ".partial")) == []
        # Once the store is healthy again, the next load takes the new version.
        proxy.rules.clear()
        s3.client().delete_object(Bucket=BUCKET, Key="repo/m/4/model.onnx")
        client.load_model("m")
        assert answer(k) == (2, 2.0)
    finally:
        k.stop()
        proxy.stop()


def start_fails(repo, *flags, env=CREDENTIALS):
    """Runs kiln expecting it to refuse to start; returns its log."""
    r = subprocess.run([KILN, "--model-repository", repo, "--http-port", "0", "--grpc-port", "0", *flags],
                       env={**os.environ, "NO_COLOR": "1", **env}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stderr[-2000:]
    return r.stderr


def test_a_repository_that_cannot_be_read_stops_the_start_with_the_url_and_the_cause(s3):
    put(s3, "m/1/model.onnx", fixture("add1.onnx"))
    cache = ["--model-cache-dir", tempfile.mkdtemp(prefix="kiln-cache-")]
    at = ["--storage-endpoint", s3.endpoint, *cache]
    assert "unsupported scheme 'hdfs://'" in start_fails("hdfs://cluster/models")
    log = start_fails("s3://no-such-bucket/repo", *at)
    assert "cannot read model repository s3://no-such-bucket/repo" in log and "NoSuchBucket" in log
    silent = Silent()
    try:
        log = start_fails(f"s3://{BUCKET}/repo", "--storage-endpoint", silent.endpoint,
                          "--storage-timeout-secs", "1", "--storage-retries", "0", *cache)
        assert f"s3://{BUCKET}/repo" in log and "no answer from the store within 1s" in log, log[-1500:]
    finally:
        silent.stop()
    log = start_fails(f"s3://{BUCKET}/repo", "--storage-endpoint", f"http://127.0.0.1:{free_port()}",
                      "--storage-retries", "0", *cache)
    assert f"cannot read model repository s3://{BUCKET}/repo" in log, log[-1500:]
    not_a_folder = os.path.join(tempfile.mkdtemp(), "file")
    open(not_a_folder, "w").close()
    log = start_fails(f"s3://{BUCKET}/repo", "--storage-endpoint", s3.endpoint,
                      "--model-cache-dir", os.path.join(not_a_folder, "cache"))
    assert "cannot use the model cache folder" in log, log[-1500:]


def test_wrong_credentials_stop_the_start():
    # moto checks signatures once its first few (unauthenticated) actions are spent.
    s3 = S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="kiln")
        iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="kiln")["AccessKey"]
        owner = s3.client(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        owner.create_bucket(Bucket=BUCKET)
        owner.put_object(Bucket=BUCKET, Key="repo/m/1/model.onnx", Body=fixture("add1.onnx"))
        flags = ["--storage-endpoint", s3.endpoint, "--model-cache-dir", tempfile.mkdtemp(prefix="kiln-cache-")]
        wrong = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        log = start_fails(f"s3://{BUCKET}/repo", *flags, env=wrong)
        assert "403 Forbidden" in log and "SignatureDoesNotMatch" in log, log[-1500:]
        assert "not-the-secret" not in log
        # The right key, from the shared credentials file (no key in the environment).
        home = tempfile.mkdtemp(prefix="kiln-home-")
        os.makedirs(os.path.join(home, ".aws"))
        with open(os.path.join(home, ".aws", "credentials"), "w") as f:
            f.write(f"[models]\naws_access_key_id = {key['AccessKeyId']}\n"
                    f"aws_secret_access_key = {key['SecretAccessKey']}\n")
        env = {**{k: None for k in os.environ if k.startswith("AWS_")}, "HOME": home, "AWS_PROFILE": "models"}
        k = Kiln(f"s3://{BUCKET}/repo", flags, env=env)
        try:
            assert answer(k) == (1, 1.0)
            assert "credentials from the shared credentials file" in "".join(k.log)
        finally:
            k.stop()
    finally:
        s3.stop()


def health(k, service):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(k.grpc_url))
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(
            stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    except grpc.RpcError as e:
        return e.code().name


def test_kserve_layout_health_and_reflection():
    # What KServe's storage-initializer lays at /mnt/models for a storageUri that
    # names a file: that file alone, under its own name.
    mnt = tempfile.mkdtemp(prefix="kiln-mnt-")
    shutil.copy(os.path.join(ROOT, "models", "digits_mlp", "1", "model.onnx"), os.path.join(mnt, "digits.onnx"))
    k = Kiln(mnt, ["--model-name", "digits"])
    try:
        c = httpclient.InferenceServerClient(k.http_url)
        assert [(e["name"], e["version"], e["state"]) for e in c.get_model_repository_index()] == [
            ("digits", "1", "READY")]
        assert c.is_model_ready("digits", "1")
        assert [health(k, s) for s in ("", "inference.GRPCInferenceService", "digits", "other")] == [
            "SERVING", "SERVING", "SERVING", "NOT_FOUND"]
        db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(k.grpc_url))
        services = set(db.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services, services
        methods = [m.name for m in db.FindFileContainingSymbol("inference.GRPCInferenceService").service[0].method]
        assert "ModelInfer" in methods and "ModelStreamInfer" in methods
    finally:
        k.stop()


def test_health_is_not_serving_while_models_download(s3):
    # A single model in the bucket, its download held back by the proxy.
    proxy = FaultyProxy(s3)
    proxy.rules[r"/model\.onnx$"] = ("delay", 3)
    s3.client().put_object(Bucket=BUCKET, Key="one/model.onnx", Body=fixture("add1.onnx"))
    k = Kiln(f"s3://{BUCKET}/one", ["--model-name", "m", "--storage-endpoint", proxy.endpoint, "--model-cache-dir",
                                  tempfile.mkdtemp(prefix="kiln-cache-")], env=CREDENTIALS, wait=False)
    try:
        assert health(k, "") == "NOT_SERVING" and health(k, "m") == "NOT_SERVING"
        wait_for(lambda: health(k, "") == "SERVING")
        assert health(k, "m") == "SERVING" and answer(k) == (1, 1.0)
    finally:
        k.stop()
        proxy.stop()


def test_an_azure_blob_repository_serves_and_swaps_versions():
    # The same loader through object_store's Azure client, against Azurite: a
    # listing that quotes ETags unlike its GETs must not read as a change.
    from azurite import Azurite, installed
    blob = installed()
    if blob is None:
        pytest.skip("npm is not installed (Azurite comes from the npm registry)")
    az = Azurite(blob)
    try:
        c = az.container("models")
        c.create_container()
        c.upload_blob("repo/m/1/model.onnx", fixture("add1.onnx"))
        k = Kiln("az://models/repo", ["--storage-endpoint", az.endpoint, "--model-control-mode", "explicit",
                                      "--load-model", "m", "--model-cache-dir", tempfile.mkdtemp(prefix="kiln-cache-")],
                 env=az.env)
        try:
            assert answer(k) == (1, 1.0)
            c.upload_blob("repo/m/2/model.onnx", fixture("add2.onnx"))
            httpclient.InferenceServerClient(k.http_url).load_model("m")
            assert answer(k) == (2, 2.0)
            assert "from=az://models/repo/m/2" in "".join(k.log)
        finally:
            k.stop()
    finally:
        az.stop()


@pytest.fixture()
def small_disk():
    """A mount point for a tmpfs of the test's choosing (root only: skipped elsewhere)."""
    point = tempfile.mkdtemp(prefix="kiln-disk-")
    mounted = []

    def mount(options):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", point], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for p in mounted:
        subprocess.run(["umount", p], capture_output=True)


def test_a_read_only_cache_stops_the_start(s3, small_disk):
    put(s3, "m/1/model.onnx", fixture("add1.onnx"))
    folder = small_disk("ro,size=1m")
    log = start_fails(f"s3://{BUCKET}/repo", "--storage-endpoint", s3.endpoint, "--model-cache-dir", folder)
    assert f"cannot use the model cache folder {folder}" in log and "Read-only file system" in log, log[-1500:]


def test_a_full_disk_fails_that_version_alone(s3, small_disk):
    put(s3, "m/1/model.onnx", fixture("add1.onnx"))
    with open(os.path.join(ROOT, "models", "digits_mlp", "1", "model.onnx"), "rb") as f:
        put(s3, "big/1/model.onnx", f.read())
    folder = small_disk("size=16k")
    k = s3_kiln(s3, bucket=BUCKET, cache=folder)
    try:
        assert answer(k) == (1, 1.0)
        lines = {(e["name"], e.get("version")): e for e in index(k)}
        assert lines[("big", "1")]["state"] == "UNAVAILABLE"
        assert "No space left on device" in lines[("big", "1")]["reason"], lines
        assert os.listdir(os.path.join(folder, ".partial")) == []
    finally:
        k.stop()
