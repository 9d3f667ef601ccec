"""One inference per example model against a Kiln container, through the ports it
publishes (KILN_HTTP_PORT, KILN_GRPC_PORT): REST and gRPC with tritonclient, the
ONNX models checked against onnxruntime in this process, MiniLM by its shape and
unit norm. Run by scripts/deploy-checks.sh with the test venv's Python."""
import os
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "..", "models")
http = httpclient.InferenceServerClient(f"127.0.0.1:{os.environ['KILN_HTTP_PORT']}")
grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{os.environ['KILN_GRPC_PORT']}")
assert http.is_server_ready() and grpc.is_server_ready()
rng = np.random.default_rng(7)


def check_onnx(name, client, lib):
    sess = ort.InferenceSession(os.path.join(MODELS, name, "1", "model.onnx"))
    feeds, inputs = {}, []
    for i in sess.get_inputs():
        shape = [2 if not isinstance(d, int) else d for d in i.shape]
        x = rng.random(shape, dtype=np.float32) * 4
        feeds[i.name] = x
        t = lib.InferInput(i.name, list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        inputs.append(t)
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    got = client.infer(name, inputs)
    for out, w in want.items():
        g = got.as_numpy(out)
        if not np.allclose(g, w, atol=1e-4):
            sys.exit(f"{name}/{out}: container answered {g}, expected {w}")
    print(f"{name} over {lib.__name__}: matches onnxruntime")


for name in ("mlp_tiny", "cnn_small", "digits_mlp"):
    check_onnx(name, http, httpclient)
check_onnx("mlp_tiny", grpc, grpcclient)

if os.path.isdir(os.path.join(MODELS, "minilm")):
    t = grpcclient.InferInput("text", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"A man is eating food."], dtype=object))
    e = grpc.infer("minilm", [t]).as_numpy("embedding")
    if e.shape != (1, 384) or abs(np.linalg.norm(e) - 1) > 1e-4:
        sys.exit(f"minilm: embedding of shape {e.shape}, norm {np.linalg.norm(e)}")
    print("minilm over gRPC: a unit 384-vector")
