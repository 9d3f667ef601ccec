"""Model lifecycle through unmodified tritonclient: the repository extension (load
with a config override, unload, index) over HTTP and gRPC, the version each answer
names, and canary routing by label, header and request parameter."""
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Kiln

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "lifecycle")


def place(repo, model, version, fixture):
    d = os.path.join(repo, model, str(version))
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, fixture), os.path.join(d, "model.onnx"))


@pytest.fixture()
def repo():
    d = tempfile.mkdtemp(prefix="kiln-lifecycle-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def infer(client, mod, version="", **kw):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = mod.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("m", [inp], model_version=version, **kw)
    k = float((r.as_numpy("Y") - x)[0, 0])
    resp = r.get_response()
    v = resp["model_version"] if isinstance(resp, dict) else resp.model_version
    return int(v), k


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_reload_unload_with_tritonclient(repo, protocol):
    place(repo, "m", 1, "add1.onnx")
    k = Kiln(repo, ["--model-control-mode", "explicit"])
    try:
        mod = httpclient if protocol == "http" else grpcclient
        c = mod.InferenceServerClient(k.http_url if protocol == "http" else k.grpc_url)
        assert not c.is_model_ready("m")
        c.load_model("m")
        assert c.is_model_ready("m")
        assert infer(c, mod) == (1, 1.0)
        # A new version: the reload swaps it in; the answer names it.
        place(repo, "m", 2, "add2.onnx")
        c.load_model("m")
        assert infer(c, mod) == (2, 2.0)
        idx = c.get_model_repository_index()
        entries = idx if protocol == "http" else json.loads(
            __import__("google.protobuf.json_format", fromlist=["x"]).MessageToJson(idx)
        )["models"]
        assert [(e["name"], e.get("version"), e["state"]) for e in entries] == [("m", "2", "READY")]
        # A config override (Triton's `config` parameter, Kiln's keys as JSON).
        c.load_model("m", config=json.dumps({"max_batch_size": 2, "version_policy": {"all": True}}))
        cfg = c.get_model_config("m")
        cfg = cfg if protocol == "http" else cfg.config
        mbs = cfg["max_batch_size"] if protocol == "http" else cfg.max_batch_size
        assert mbs == 2
        assert infer(c, mod, "1") == (1, 1.0)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("m", config=json.dumps({"max_batch": 2}))
        assert "max_batch" in str(e.value)
        with pytest.raises(InferenceServerException):
            c.load_model("absent")
        c.unload_model("m")
        assert not c.is_model_ready("m")
        with pytest.raises(InferenceServerException):
            infer(c, mod)
    finally:
        k.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_canary_routing_with_tritonclient(repo, protocol):
    place(repo, "m", 1, "add1.onnx")
    place(repo, "m", 2, "add2.onnx")
    with open(os.path.join(repo, "m", "config.toml"), "w") as f:
        f.write("version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 30\n")
    k = Kiln(repo)
    try:
        mod = httpclient if protocol == "http" else grpcclient
        c = mod.InferenceServerClient(k.http_url if protocol == "http" else k.grpc_url)
        assert infer(c, mod, "canary") == (2, 2.0)
        assert infer(c, mod, "stable") == (1, 1.0)
        seen = {}
        for i in range(600):
            v, kk = infer(c, mod)
            assert kk == float(v)
            seen[v] = seen.get(v, 0) + 1
        assert set(seen) == {1, 2}, seen
        assert 0.2 < seen[2] / 600 < 0.4, seen
        # Sticky: a key (header or parameter) always lands on the same version.
        for u in range(40):
            key = f"user-{u}"
            by_header = {infer(c, mod, headers={"x-kiln-routing-key": key})[0] for _ in range(3)}
            by_param = {infer(c, mod, parameters={"routing_key": key})[0] for _ in range(3)}
            assert len(by_header) == 1 and by_header == by_param, (key, by_header, by_param)
    finally:
        k.stop()
