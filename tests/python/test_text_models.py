"""Text models through unmodified tritonclient: MiniLM sentence embeddings on ONNX
Runtime (the graph scripts/minilm_onnx.py writes, pooled in the graph or as a
Hugging Face export's hidden states pooled by Kiln) and on Candle, against the
committed independent reference (scripts/minilm_reference.py), BYTES tensors over
HTTP JSON, HTTP binary and gRPC, the defined behaviour for invalid UTF-8, empty
and over-long texts; and Candle's MLP family against numpy."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Kiln

MINILM = os.path.join(ROOT, "models", "minilm", "1")
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "minilm", "reference.json")

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(MINILM, "model.onnx")),
    reason="models/minilm is laid out by scripts/setup-python.sh (scripts/fetch_minilm.py)",
)


def minilm_repo(backend, config_extra="", version=MINILM):
    """A repository whose `minilm` links to `version` (models/minilm/1), with its own config."""
    d = tempfile.mkdtemp(prefix="kiln-text-")
    os.makedirs(os.path.join(d, "minilm"))
    os.symlink(version, os.path.join(d, "minilm", "1"))
    with open(os.path.join(d, "minilm", "config.toml"), "w") as f:
        f.write(f'backend = "{backend}"\nfamily = "bert_embedding"\nmax_batch_size = 64\n' + config_extra)
    return d


@pytest.fixture(scope="module", params=["onnxruntime", "candle"])
def server(request):
    d = minilm_repo(request.param)
    k = Kiln(d)
    k.backend = request.param
    yield k
    k.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE) as f:
        return json.load(f)["rows"]


def embed(k, texts, mode):
    arr = np.array([t.encode() if isinstance(t, str) else t for t in texts], dtype=np.object_)
    if mode == "grpc":
        c = grpcclient.InferenceServerClient(k.grpc_url)
        inp = grpcclient.InferInput("text", [len(texts)], "BYTES")
        inp.set_data_from_numpy(arr)
        return c.infer("minilm", [inp]).as_numpy("embedding")
    c = httpclient.InferenceServerClient(k.http_url)
    binary = mode == "http-binary"
    inp = httpclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(arr, binary_data=binary)
    out = httpclient.InferRequestedOutput("embedding", binary_data=binary)
    return c.infer("minilm", [inp], outputs=[out]).as_numpy("embedding")


@pytest.mark.parametrize("mode", ["http-json", "http-binary", "grpc"])
def test_embeddings_match_the_independent_reference(server, reference, mode):
    texts = [r["text"] for r in reference]
    want = np.array([r["embedding"] for r in reference], dtype=np.float32)
    got = embed(server, texts, mode)
    assert got.shape == (len(texts), 384)
    diff = np.abs(got - want).max()
    assert diff < 1e-4, diff
    # One at a time (no padding) gives the same vectors.
    for i in (0, 7, 9):
        assert np.abs(embed(server, [texts[i]], mode)[0] - want[i]).max() < 1e-4


def test_concurrent_requests_of_different_lengths_batch_correctly(server, reference):
    texts = [r["text"] for r in reference]
    want = {r["text"]: np.array(r["embedding"]) for r in reference}
    jobs = [[texts[i % len(texts)], texts[(i * 3 + 1) % len(texts)]] for i in range(60)]
    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda ts: (ts, embed(server, ts, "grpc")), jobs))
    for ts, got in results:
        for t, g in zip(ts, got):
            assert np.abs(g - want[t]).max() < 1e-4
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("minilm")
    s = stats["model_stats"][0]
    assert s["execution_count"] <= s["inference_count"]


def test_paraphrases_are_closer_than_unrelated_sentences(server):
    e = embed(server, [
        "A man is eating food.", "A man is eating a piece of bread.",
        "The new movie is awesome.", "The new movie is so great!",
        "A cheetah is running behind its prey.",
    ], "http-binary")
    sim = e @ e.T
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)  # L2-normalised
    assert sim[0, 1] > 0.7 and sim[2, 3] > 0.8
    for a, b in [(0, 2), (0, 3), (1, 2), (2, 4), (1, 4)]:
        assert sim[0, 1] > sim[a, b] + 0.3 and sim[2, 3] > sim[a, b] + 0.3


def test_invalid_utf8_is_rejected_alone(server):
    for mode in ["http-binary", "grpc"]:
        with pytest.raises(InferenceServerException) as e:
            embed(server, [b"fine", b"\xff\xfe broken"], mode)
        assert "not UTF-8" in str(e.value) and "element 1" in str(e.value), str(e.value)
    # Batched with good requests, the bad one fails alone.
    bad = [b"\xc3\x28"] * 1
    good = ["A man is eating food."]
    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(embed, server, bad if i % 4 == 0 else good, "grpc") for i in range(32)]
    for i, f in enumerate(futs):
        if i % 4 == 0:
            with pytest.raises(InferenceServerException):
                f.result()
        else:
            assert f.result().shape == (1, 384)


def test_long_texts_truncate_by_default_and_can_be_rejected(server):
    long = "word " * 2000
    assert embed(server, [long], "grpc").shape == (1, 384)  # cut to the model's 256 tokens
    d = minilm_repo(server.backend, 'truncate = false\nmax_sequence_length = 16\n')
    k = Kiln(d)
    try:
        assert embed(k, ["short text"], "http-json").shape == (1, 384)
        with pytest.raises(InferenceServerException) as e:
            embed(k, ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"], "http-json")
        assert "over the model's limit of 16" in str(e.value), str(e.value)
    finally:
        k.stop()
        shutil.rmtree(d, ignore_errors=True)


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_mlp_family_matches_numpy():
    rng = np.random.default_rng(7)
    sizes = [6, 16, 8, 3]
    d = tempfile.mkdtemp(prefix="kiln-mlp-")
    v = os.path.join(d, "mlp", "1")
    os.makedirs(v)
    W = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        W[f"layers.{i}.weight"] = rng.normal(size=(b, a)).astype(np.float32)
        W[f"layers.{i}.bias"] = rng.normal(size=(b,)).astype(np.float32)
    write_safetensors(os.path.join(v, "model.safetensors"), W)
    with open(os.path.join(v, "config.json"), "w") as f:
        json.dump({"sizes": sizes, "activation": "tanh"}, f)
    with open(os.path.join(d, "mlp", "config.toml"), "w") as f:
        f.write('backend = "candle"\nfamily = "mlp"\n')
    k = Kiln(d)
    try:
        x = rng.normal(size=(5, 6)).astype(np.float32)
        h = x
        for i in range(3):
            h = h @ W[f"layers.{i}.weight"].T + W[f"layers.{i}.bias"]
            if i < 2:
                h = np.tanh(h)
        c = httpclient.InferenceServerClient(k.http_url)
        inp = httpclient.InferInput("INPUT0", [5, 6], "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
        assert np.abs(got - h).max() < 1e-4
        assert c.get_model_metadata("mlp")["platform"] == "candle"
    finally:
        k.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_text_input_is_described_as_triton_does_and_accepts_both_shapes(server, reference):
    c = httpclient.InferenceServerClient(server.http_url)
    cfg = c.get_model_config("minilm")
    assert cfg["input"][0]["dims"] == [1] and cfg["input"][0]["reshape"] == {"shape": []}
    assert c.get_model_metadata("minilm")["inputs"][0]["shape"] == [-1, 1]
    g = grpcclient.InferenceServerClient(server.grpc_url)
    gcfg = g.get_model_config("minilm", as_json=True)["config"]
    assert gcfg["input"][0]["dims"] == ["1"] and "reshape" in gcfg["input"][0]
    # [batch, 1] (what perf_analyzer sends) and [batch] give the same vectors.
    texts = [r["text"] for r in reference[:3]]
    inp = httpclient.InferInput("text", [3, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    got = c.infer("minilm", [inp]).as_numpy("embedding")
    assert got.shape == (3, 384)
    assert np.abs(got - embed(server, texts, "http-json")).max() < 1e-6
    want = {"onnxruntime": "onnxruntime_onnx", "candle": "candle"}[server.backend]
    assert c.get_model_metadata("minilm")["platform"] == want


def test_a_graph_of_hidden_states_is_pooled_by_the_server(reference):
    """A Hugging Face export's form: token_type_ids in, last_hidden_state out."""
    d = tempfile.mkdtemp(prefix="kiln-hidden-")
    v = os.path.join(d, "v")
    os.makedirs(v)
    for f in ("tokenizer.json", "config.json", "sentence_bert_config.json"):
        os.symlink(os.path.join(MINILM, f), os.path.join(v, f))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "minilm_onnx.py"), MINILM,
                    os.path.join(v, "model.onnx"), "--hidden-states"], check=True)
    repo = minilm_repo("onnxruntime", version=v)
    k = Kiln(repo)
    try:
        texts = [r["text"] for r in reference]
        want = np.array([r["embedding"] for r in reference], dtype=np.float32)
        for mode in ("grpc", "http-binary"):
            assert np.abs(embed(k, texts, mode) - want).max() < 1e-4
    finally:
        k.stop()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
