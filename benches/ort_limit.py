#!/usr/bin/env python3
"""The in-process limit: a model run directly by ONNX Runtime, no server, no
serialisation, at given batch sizes. Same runtime version and session defaults as
Kiln's onnxruntime backend (default intra-op threads, full graph optimisation).

    ort_limit.py --model NAME=PATH [--model ...] --batches 1 8 32 --seconds 2 >> limit.jsonl

Prints one JSON line per (model, batch): calls, samples/s, p50/p99 latency of a call,
and the process's CPU per sample over the timed calls (every thread's: ONNX Runtime's
intra-op threads spinning between calls count, as they do in a server).
--no-spinning and --spin-stop set the same session options as Kiln's
`intra_op_spinning = false` and `intra_op_spin_stop = true`, so that a server and its
limit are compared under the same settings.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def measure(name, path, batches, seconds, threads, spinning, spin_stop):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if spin_stop:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    width = inp.shape[1]
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, width)).astype(np.float32)
        feed = {inp.name: x}
        for _ in range(50):
            sess.run(None, feed)
        lat = []
        cpu0 = time.process_time()
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            sess.run(None, feed)
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if t1 > end:
                break
        cpu = time.process_time() - cpu0
        us = np.array(lat) * 1e6
        print(json.dumps({
            "model": name, "batch": b, "calls": len(us),
            "samples_per_s": round(len(us) * b / us.sum() * 1e6, 1),
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "cpu_us_per_sample": round(cpu * 1e6 / (len(us) * b), 2),
            "threads": threads or "default",
            "spinning": spinning, "spin_stop": spin_stop,
            "onnxruntime": ort.__version__,
        }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads, 0: ONNX Runtime's default")
    ap.add_argument("--no-spinning", action="store_true", help="intra-op threads do not spin")
    ap.add_argument("--spin-stop", action="store_true", help="intra-op threads stop spinning when a call ends")
    a = ap.parse_args()
    for m in a.model:
        name, path = m.split("=", 1)
        measure(name, path, a.batches, a.seconds, a.threads, not a.no_spinning, a.spin_stop)


if __name__ == "__main__":
    main()
