#!/usr/bin/env python3
"""MiniLM (a BERT encoder) as an ONNX graph for ONNX Runtime, written from the same
`model.safetensors` and `config.json` the Candle backend loads: no PyTorch, no
export, the weights copied as they are.

    python scripts/minilm_onnx.py models/minilm/1 OUT.onnx [--portable] [--hidden-states]

Inputs `input_ids` and `attention_mask` (INT64 [batch, seq]; token types are all 0,
as sentence-transformers sends them); output `embedding` (FP32 [batch, hidden]):
the last hidden states mean-pooled over the real tokens and L2-normalised, as
sentence-transformers' all-MiniLM-L6-v2 does. Attention is ONNX Runtime's fused
`com.microsoft.Attention` kernel (one QKV matmul, masked softmax, per head);
`--portable` writes it from standard ONNX operators instead (slower in ONNX
Runtime, runnable by any ONNX runtime). `--hidden-states` writes the graph as a
Hugging Face export has it: a third input `token_type_ids` and the last hidden
states `last_hidden_state` (FP32 [batch, seq, hidden]) out, unpooled (the server
pools them; the tests serve both forms).

scripts/fetch_minilm.py runs this to write models/minilm/1/model.onnx, which
Kiln's ONNX Runtime backend serves with `family = "bert_embedding"`: 3-5x the
Candle backend's throughput on the same weights (benches/README.md, "MiniLM").
"""
import argparse
import json
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"F32": np.float32, "I64": np.int64}


def safetensors(path):
    """{name: array} of a .safetensors file (an 8-byte header length, a JSON header, the data)."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8:8 + n])
    base = 8 + n
    return {k: np.frombuffer(data[base + v["data_offsets"][0]: base + v["data_offsets"][1]],
                             dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
            for k, v in head.items() if k != "__metadata__"}


class Graph:
    def __init__(self, weights):
        self.w, self.nodes, self.inits, self.names, self.n = weights, [], [], set(), 0

    def const(self, name, value):
        """An initializer; one named before is reused (a constant every layer shares)."""
        if name not in self.names:
            self.names.add(name)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind, inputs, domain="", **attrs):
        self.n += 1
        out = f"{kind.lower()}_{self.n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], domain=domain or None, **attrs))
        return out

    def linear(self, x, prefix):
        w = self.const(prefix + ".wT", self.w[prefix + ".weight"].T)
        return self.op("Add", [self.op("MatMul", [x, w]), self.const(prefix + ".b", self.w[prefix + ".bias"])])

    def layer_norm(self, x, prefix, eps):
        return self.op("LayerNormalization", [x, self.const(prefix + ".g", self.w[prefix + ".weight"]),
                                              self.const(prefix + ".beta", self.w[prefix + ".bias"])],
                       axis=-1, epsilon=eps)


def attention_portable(g, x, prefix, heads, hidden, bias):
    split = g.const("split_shape", np.array([0, 0, heads, hidden // heads], np.int64))
    merge = g.const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1 / np.sqrt(hidden // heads), np.float32))
    q = g.op("Transpose", [g.op("Reshape", [g.linear(x, prefix + "query"), split])], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [g.op("Reshape", [g.linear(x, prefix + "key"), split])], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [g.op("Reshape", [g.linear(x, prefix + "value"), split])], perm=[0, 2, 1, 3])
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge])


def attention_fused(g, x, prefix, heads, mask32):
    w = np.concatenate([g.w[prefix + t + ".weight"].T for t in ("query", "key", "value")], axis=1)
    b = np.concatenate([g.w[prefix + t + ".bias"] for t in ("query", "key", "value")])
    return g.op("Attention", [x, g.const(prefix + "qkv.w", w), g.const(prefix + "qkv.b", b), mask32],
                domain="com.microsoft", num_heads=heads)


def build(folder, portable, hidden_states=False):
    cfg = json.load(open(f"{folder}/config.json"))
    g = Graph(safetensors(f"{folder}/model.safetensors"))
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    e = "embeddings."
    # Embeddings: word + position (the first seq rows of the table) + token type 0.
    word = g.op("Gather", [g.const("word", g.w[e + "word_embeddings.weight"]), "input_ids"])
    seq = g.op("Shape", ["input_ids"], start=1, end=2)
    pos = g.op("Slice", [g.const("pos", g.w[e + "position_embeddings.weight"]),
                         g.const("zero", np.array([0], np.int64)), seq, g.const("axis0", np.array([0], np.int64))])
    types = g.w[e + "token_type_embeddings.weight"]
    typed = (g.op("Gather", [g.const("types", types), "token_type_ids"]) if hidden_states
             else g.const("type0", types[0]))
    x = g.op("Add", [g.op("Add", [word, pos]), typed])
    x = g.layer_norm(x, e + "LayerNorm", eps)
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    if portable:
        # Padding positions get a large negative score before the softmax.
        bias = g.op("Mul", [g.op("Sub", [g.const("one", np.array(1, np.float32)), mask]),
                            g.const("neg", np.array(-1e9, np.float32))])
        bias = g.op("Unsqueeze", [bias, g.const("axes12", np.array([1, 2], np.int64))])
    else:
        mask32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    half = g.const("half", np.array(0.5, np.float32))
    one = g.const("one_f", np.array(1, np.float32))
    sqrt2 = g.const("sqrt2", np.array(np.sqrt(2), np.float32))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        ctx = (attention_portable(g, x, p + "attention.self.", heads, hidden, bias) if portable
               else attention_fused(g, x, p + "attention.self.", heads, mask32))
        x = g.layer_norm(g.op("Add", [g.linear(ctx, p + "attention.output.dense"), x]),
                         p + "attention.output.LayerNorm", eps)
        f = g.linear(x, p + "intermediate.dense")
        # GELU as BERT has it: x/2 (1 + erf(x / sqrt 2)).
        gelu = g.op("Mul", [g.op("Mul", [f, half]), g.op("Add", [g.op("Erf", [g.op("Div", [f, sqrt2])]), one])])
        x = g.layer_norm(g.op("Add", [g.linear(gelu, p + "output.dense"), x]), p + "output.LayerNorm", eps)
    names = ["input_ids", "attention_mask"]
    if hidden_states:
        g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
        names.append("token_type_ids")
        out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])
    else:
        # Mean over the real tokens, then L2 normalisation (the norm floored at 1e-12).
        m3 = g.op("Unsqueeze", [mask, g.const("axis2", np.array([2], np.int64))])
        axis1 = g.const("axis1", np.array([1], np.int64))
        mean = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [x, m3]), axis1], keepdims=0),
                            g.op("ReduceSum", [m3, axis1], keepdims=0)])
        norm = g.op("Max", [g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), axis1], keepdims=1)]),
                            g.const("floor", np.array(1e-12, np.float32))])
        g.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))
        out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])
    graph = helper.make_graph(
        g.nodes, "minilm",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names],
        [out], g.inits)
    opsets = [helper.make_opsetid("", 17)] + ([] if portable else [helper.make_opsetid("com.microsoft", 1)])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if portable:
        onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--portable", action="store_true", help="standard ONNX operators only")
    ap.add_argument("--hidden-states", action="store_true",
                    help="token_type_ids in, last_hidden_state out (unpooled), as a Hugging Face export")
    a = ap.parse_args()
    write(a.folder, a.out, a.portable, a.hidden_states)


def write(folder, out, portable=False, hidden_states=False):
    """Builds the graph and writes it beside `out`, then renames it into place, so a
    server polling the folder never sees half a file."""
    onnx.save(build(folder, portable, hidden_states), out + ".part")
    os.replace(out + ".part", out)


if __name__ == "__main__":
    main()
