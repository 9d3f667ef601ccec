"""Unmodified Triton clients against Kiln, checked against in-process onnxruntime."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT

MODELS = {
    "mlp_tiny": {"INPUT0": ((16,), np.float32)},
    "cnn_small": {"image": ((1, 28, 28), np.float32)},
    "digits_mlp": {"X": ((64,), np.float32)},
}


def reference(model, feeds):
    sess = ort.InferenceSession(os.path.join(ROOT, "models", model, "1", "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def make_inputs(model, batch, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dt) in MODELS[model].items():
        x = rng.standard_normal((batch, *shape)).astype(dt)
        if model == "digits_mlp":
            x = rng.integers(0, 17, size=(batch, *shape)).astype(dt)
        feeds[name] = x
    return feeds


def check(model, got, want, backend):
    tol = 1e-5 if backend == "onnxruntime" else 1e-4
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        if np.issubdtype(w.dtype, np.integer):
            assert np.array_equal(g, w), name
        else:
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{model}:{name}")


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("mode", ["http-json", "http-binary", "grpc"])
def test_outputs_match_onnxruntime(kiln, model, mode):
    assert kiln.backend_of(model) == kiln.backend, "".join(kiln.log)
    feeds = make_inputs(model, batch=3, seed=hash((model, mode)) % 1000)
    want = reference(model, feeds)
    if mode == "grpc":
        c = kiln.grpc_client()
        mod = grpcclient
    else:
        c = kiln.http_client()
        mod = httpclient
    binary = mode != "http-json"
    inputs = []
    for name, x in feeds.items():
        i = mod.InferInput(name, list(x.shape), "FP32")
        if mod is httpclient:
            i.set_data_from_numpy(x, binary_data=binary)
        else:
            i.set_data_from_numpy(x)
        inputs.append(i)
    if mod is httpclient:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in want]
    else:
        outputs = [grpcclient.InferRequestedOutput(n) for n in want]
    r = c.infer(model, inputs, outputs=outputs, request_id="abc")
    resp = r.get_response() if mod is httpclient else r.get_response(as_json=True)
    assert resp["id"] == "abc" and resp["model_version"] == "1"
    got = {n: r.as_numpy(n) for n in want}
    check(model, got, want, kiln.backend)


def test_server_and_model_metadata(kiln):
    h = kiln.http_client()
    g = kiln.grpc_client()
    assert h.is_server_live() and h.is_server_ready() and g.is_server_live() and g.is_server_ready()
    assert h.is_model_ready("mlp_tiny") and g.is_model_ready("mlp_tiny", "1")
    md = h.get_model_metadata("cnn_small")
    assert md["inputs"][0]["shape"] == [-1, 1, 28, 28]
    gmd = g.get_model_metadata("cnn_small", as_json=True)
    assert gmd["inputs"][0]["shape"] == ["-1", "1", "28", "28"]
    cfg = g.get_model_config("digits_mlp", as_json=True)["config"]
    assert cfg["input"][0]["dims"] == ["64"] and cfg["max_batch_size"] == 32
    assert h.get_model_config("digits_mlp")["output"][1]["dims"] == [10]
    # The example models, plus MiniLM once scripts/fetch_minilm.py laid it out.
    names = {m["name"] for m in h.get_model_repository_index()}
    assert names - {"minilm"} == set(MODELS)
    assert all(m["state"] == "READY" for m in h.get_model_repository_index())
    assert len(g.get_model_repository_index().models) == len(names)
    assert "binary_tensor_data" in h.get_server_metadata()["extensions"]


def test_errors_reach_clients(kiln):
    h = kiln.http_client()
    g = kiln.grpc_client()
    x = np.zeros((1, 15), np.float32)
    for c, mod in ((h, httpclient), (g, grpcclient)):
        i = mod.InferInput("INPUT0", [1, 15], "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match=r"shape \[1, 15\], expected \[-1, 16\]"):
            c.infer("mlp_tiny", [i])
        with pytest.raises(InferenceServerException, match="unknown model"):
            c.infer("no_such_model", [i])
    assert h.is_server_live()


def test_bytes_and_bf16_with_onnxruntime(kiln_tests):
    """BYTES over JSON, the binary extension and gRPC; BF16 (ONNX Runtime only) over binary and gRPC."""
    words = np.array([["héllo", ""], ["a b", "x" * 300]], dtype=object)
    bf = np.array([[1.5, -2.0], [0.0, 1024.0]], dtype=np.float32)
    h = kiln_tests.http_client()
    g = kiln_tests.grpc_client()
    for c, mod, binary in ((h, httpclient, False), (h, httpclient, True), (g, grpcclient, True)):
        a = mod.InferInput("IN_BYTES", [2, 2], "BYTES")
        b = mod.InferInput("IN_BF16", [2, 2], "BF16")
        if mod is httpclient:
            a.set_data_from_numpy(words, binary_data=binary)
            b.set_data_from_numpy(bf, binary_data=True)
            outs = [httpclient.InferRequestedOutput("OUT_BYTES", binary_data=binary), httpclient.InferRequestedOutput("OUT_BF16", binary_data=True)]
        else:
            a.set_data_from_numpy(words)
            b.set_data_from_numpy(bf)
            outs = None
        r = c.infer("identity_ort", [a, b], outputs=outs)
        got = r.as_numpy("OUT_BYTES")
        assert [[w.decode() if isinstance(w, bytes) else w for w in row] for row in got] == words.tolist()
        np.testing.assert_array_equal(r.as_numpy("OUT_BF16"), bf)


def perf_analyzer_env():
    import nvidia.cuda_runtime  # namespace package: no __file__
    lib = os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = lib + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    return env


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_smoke(kiln, protocol):
    if kiln.backend != "onnxruntime":
        pytest.skip("one perf_analyzer run per protocol is enough")
    pa = os.path.join(os.path.dirname(sys.executable), "perf_analyzer")
    if not os.path.exists(pa):
        pa = shutil.which("perf_analyzer")
    if not pa:
        if os.environ.get("KILN_REQUIRE_PERF_ANALYZER"):
            pytest.fail("perf_analyzer is required (KILN_REQUIRE_PERF_ANALYZER) but not installed")
        pytest.skip("perf_analyzer not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"data": [{"INPUT0": [float(i) / 16 for i in range(16)]}]}, f)
        data = f.name
    url = kiln.http_url if protocol == "http" else kiln.grpc_url
    secure = []
    if kiln.tls:
        ca, cert, key = (os.path.join(kiln.tls, n) for n in ("ca.pem", "client.pem", "client.key"))
        if protocol == "grpc":
            # perf_analyzer ignores -H on gRPC: it is let in by its client
            # certificate, whose subject names a key.
            secure = ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", ca,
                      "--ssl-grpc-private-key-file", key, "--ssl-grpc-certificate-chain-file", cert]
        else:
            url = "https://" + url
            secure = ["--ssl-https-ca-certificates-file", ca, "-H", f"Authorization:Bearer {kiln.key}"]
    p = subprocess.run(
        [pa, "-m", "mlp_tiny", "-u", url, "-i", protocol, "--concurrency-range", "2", *secure,
         "--measurement-interval", "1500", "--input-data", data, "--stability-percentage", "200", "--max-trials", "10"],
        env=perf_analyzer_env(), capture_output=True, text=True, timeout=240,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "Throughput" in out and "infer/sec" in out, out
    assert "error" not in out.lower().replace("std error", ""), out
    # The statistics extension gives perf_analyzer its server-side breakdown.
    assert "Server:" in out and "Execution count:" in out and "compute infer" in out, out


def test_statistics_through_both_clients(kiln):
    h = kiln.http_client()
    g = kiln.grpc_client()
    x = np.ones((3, 16), np.float32)
    for client, mod in ((h, httpclient), (g, grpcclient)):
        inp = mod.InferInput("INPUT0", [3, 16], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("mlp_tiny", [inp])
    hs = h.get_inference_statistics("mlp_tiny")["model_stats"][0]
    assert hs["name"] == "mlp_tiny" and hs["version"] == "1"
    assert hs["inference_count"] >= 6 and hs["execution_count"] >= 1
    assert hs["inference_stats"]["success"]["count"] >= 2
    gs = g.get_inference_statistics("mlp_tiny", "1", as_json=True)["model_stats"][0]
    assert int(gs["inference_count"]) >= 6
    assert int(gs["inference_stats"]["success"]["count"]) >= 2
    assert "statistics" in h.get_server_metadata()["extensions"]
