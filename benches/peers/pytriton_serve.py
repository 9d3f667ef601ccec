"""Triton 2.51 (the tritonserver bundled in nvidia-pytriton 0.7.0) serving ONNX
models through Python callables that run them with onnxruntime, with Triton's
dynamic batcher: the Triton build these machines can run (its ONNX Runtime
backend is not in the wheel). For benches/load.sh.

    python pytriton_serve.py NAME=PATH [NAME=PATH ...]

Env: PYT_HTTP_PORT (18000), PYT_GRPC_PORT (18001), PYT_METRICS_PORT (18002),
PYT_ORT_THREADS (0: ONNX Runtime's default, as Kiln's), PYT_QUEUE_DELAY_US
(2000), PYT_MAX_BATCH (32). Each model's one input and one output are taken
from the ONNX file (FP32, a variable batch dimension first).
"""
import os
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

THREADS = int(os.environ.get("PYT_ORT_THREADS", "0"))
DELAY = int(os.environ.get("PYT_QUEUE_DELAY_US", "2000"))
MAX_BATCH = int(os.environ.get("PYT_MAX_BATCH", "32"))


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def callable_for(sess):
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    @batch
    def infer(**inputs):
        x = inputs[inp].astype(np.float32, copy=False)
        return {out: sess.run([out], {inp: x})[0]}

    return infer


def main(models):
    cfg = TritonConfig(
        http_address="127.0.0.1", http_port=int(os.environ.get("PYT_HTTP_PORT", "18000")),
        grpc_address="127.0.0.1", grpc_port=int(os.environ.get("PYT_GRPC_PORT", "18001")),
        metrics_address="127.0.0.1", metrics_port=int(os.environ.get("PYT_METRICS_PORT", "18002")),
        allow_gpu_metrics=False, log_verbose=0)
    # PyTriton 0.7 guards the statistics API behind a random token; the benchmark
    # reads the batch sizes Triton formed from it (loopback-only server).
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=cfg, security_config=security) as triton:
        for spec in models:
            name, path = spec.split("=", 1)
            sess = session(path)
            i, o = sess.get_inputs()[0], sess.get_outputs()[0]
            triton.bind(
                model_name=name, infer_func=callable_for(sess),
                inputs=[Tensor(name=i.name, dtype=np.float32, shape=tuple(i.shape[1:]))],
                outputs=[Tensor(name=o.name, dtype=np.float32, shape=tuple(o.shape[1:]))],
                config=ModelConfig(max_batch_size=MAX_BATCH,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=DELAY)),
                strict=True)
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
