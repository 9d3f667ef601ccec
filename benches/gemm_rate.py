#!/usr/bin/env python3
"""The FP32 GEMM rate an engine reaches on this CPU, on MiniLM's FFN shape (1024 rows, i.e.
8 texts x 128 tokens, by 384 -> 1536): the ceiling under MiniLM's throughput
(benches/README.md, "MiniLM served"). Medians of five 1 s windows, 1 and 2 threads.

    .venv/bin/python benches/gemm_rate.py ort                     # ONNX Runtime's MLAS
    ~/.cache/kiln-bench/stvenv/bin/python benches/gemm_rate.py torch
"""
import sys
import time

import numpy as np

M, K, N = 1024, 384, 1536


def ort_matmul(threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.rand(K, N).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.rand(M, K).astype(np.float32)
    return lambda: s.run(None, {"x": x})


def torch_matmul(threads):
    import torch
    torch.set_num_threads(threads)
    x, w = torch.rand(M, K), torch.rand(K, N)
    return lambda: x @ w


def main(engine):
    for threads in (1, 2):
        run = (ort_matmul if engine == "ort" else torch_matmul)(threads)
        for _ in range(5):
            run()
        rates = []
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1:
                run()
                n += 1
            rates.append(2 * M * K * N * n / (time.perf_counter() - t0) / 1e9)
        print(f"{engine}, {threads} thread(s): {sorted(rates)[2]:.1f} GFLOP/s (min {min(rates):.1f}, max {max(rates):.1f})")


if __name__ == "__main__":
    main(sys.argv[1])
