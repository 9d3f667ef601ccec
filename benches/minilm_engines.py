#!/usr/bin/env python3
"""MiniLM's encoder run in-process by another engine, on the shapes Kiln's Candle
benchmark uses (benches/minilm_inprocess.rs: 12- and 128-token texts, batches of
1, 8 and 32): texts/s, milliseconds per call and CPU per text (every thread of the
process). Token ids are drawn at random: the compute does not depend on them.

    # ONNX Runtime on the graph scripts/minilm_onnx.py writes (.venv has onnxruntime)
    .venv/bin/python benches/minilm_engines.py ort models/minilm/1/model.onnx
    # PyTorch through transformers, 2 threads, as MLServer + sentence-transformers runs it
    ~/.cache/kiln-bench/stvenv/bin/python benches/minilm_engines.py torch models/minilm/1
    # a third argument: seconds per shape (default 3)

With ort, first checks the graph's embeddings against tests/fixtures/minilm/reference.json.
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHAPES = [(1, 12), (8, 12), (32, 12), (1, 128), (8, 128), (32, 128)]


def ort_engine(path):
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = json.load(open(os.path.join(ROOT, "tests", "fixtures", "minilm", "reference.json")))["rows"]
    longest = max(len(r["token_ids"]) for r in ref)
    ids = np.zeros((len(ref), longest), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(ref):
        ids[i, :len(r["token_ids"])] = r["token_ids"]
        mask[i, :len(r["token_ids"])] = 1
    out = s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    worst = max(float(np.abs(out[i] - np.array(r["embedding"])).max()) for i, r in enumerate(ref))
    print(f"reference: {len(ref)} texts, largest difference {worst:.1e} (1e-4 allowed)", flush=True)
    if worst > 1e-4:
        sys.exit("the graph does not compute MiniLM")
    return lambda ids, mask: s.run(None, {"input_ids": ids, "attention_mask": mask})


def torch_engine(folder):
    import torch
    from transformers import AutoModel
    torch.set_num_threads(2)
    model = AutoModel.from_pretrained(folder).eval()

    def run(ids, mask):
        with torch.inference_mode():
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            e = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return torch.nn.functional.normalize(e, dim=1)
    return run


def main(engine, path, seconds=3.0):
    run = ort_engine(path) if engine == "ort" else torch_engine(path)
    for batch, tokens in SHAPES:
        ids = np.random.default_rng(0).integers(1000, 20000, (batch, tokens)).astype(np.int64)
        mask = np.ones_like(ids)
        for _ in range(3):
            run(ids, mask)
        calls, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run(ids, mask)
            calls += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(json.dumps({"engine": engine, "batch": batch, "tokens": tokens,
                          "texts_per_s": round(calls * batch / wall, 1), "ms_per_call": round(wall / calls * 1e3, 1),
                          "cpu_ms_per_text": round(cpu * 1e3 / (calls * batch), 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 3.0)
