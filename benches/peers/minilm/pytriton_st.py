"""Triton 2.51 (the tritonserver bundled in nvidia-pytriton 0.7.0) serving
all-MiniLM-L6-v2 with sentence-transformers (PyTorch, CPU) in a Python callable,
with Triton's dynamic batcher: the Triton peer of benches/minilm_load.sh, as a
team serving sentence-transformers on Triton's Python backend would run it.
Input `text` BYTES [batch, 1], output `embedding` FP32 [batch, 384].

    python pytriton_st.py MODEL_FOLDER

Env: PYT_HTTP_PORT (18000), PYT_GRPC_PORT (18001), PYT_METRICS_PORT (18002),
ST_THREADS (2: PyTorch's threads), PYT_QUEUE_DELAY_US (2000), PYT_MAX_BATCH (32).
"""
import os
import sys

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
from sentence_transformers import SentenceTransformer

DELAY = int(os.environ.get("PYT_QUEUE_DELAY_US", "2000"))
MAX_BATCH = int(os.environ.get("PYT_MAX_BATCH", "32"))


def main(folder):
    torch.set_num_threads(int(os.environ.get("ST_THREADS", "2")))
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)

    @batch
    def infer(text):
        texts = [t.decode() for t in text.reshape(-1)]
        with torch.inference_mode():
            emb = model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        return {"embedding": np.asarray(emb, dtype=np.float32)}

    cfg = TritonConfig(
        http_address="127.0.0.1", http_port=int(os.environ.get("PYT_HTTP_PORT", "18000")),
        grpc_address="127.0.0.1", grpc_port=int(os.environ.get("PYT_GRPC_PORT", "18001")),
        metrics_address="127.0.0.1", metrics_port=int(os.environ.get("PYT_METRICS_PORT", "18002")),
        allow_gpu_metrics=False, log_verbose=0)
    # The statistics API (the batch Triton formed) is open: a loopback-only server.
    with Triton(config=cfg, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name="minilm", infer_func=infer,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(384,))],
            config=ModelConfig(max_batch_size=MAX_BATCH,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=DELAY)),
            strict=True)
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1])
