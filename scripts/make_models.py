#!/usr/bin/env python3
"""Generates Kiln's example models (models/) and test fixtures (tests/models/).

Everything is built locally with `onnx`, `scikit-learn` and `skl2onnx`; nothing is
downloaded. Weights come from fixed seeds, so re-running gives the same files.

    python scripts/make_models.py            # writes models/ and tests/models/
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def save(model, repo, name, config=None):
    d = os.path.join(repo, name, "1")
    os.makedirs(d, exist_ok=True)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(d, "model.onnx"))
    cfg = os.path.join(repo, name, "config.toml")
    if config is not None:
        with open(cfg, "w") as f:
            f.write(config)
    elif os.path.exists(cfg):
        os.remove(cfg)
    print("wrote", d)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def mlp_tiny(rng):
    """16 -> 32 (ReLU) -> 4 (softmax), batch dimension symbolic."""
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    w2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.5
    b2 = rng.standard_normal(4).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["OUTPUT0"], axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "mlp_tiny",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def cnn_small(rng):
    """1x28x28 image -> conv 8 -> relu -> maxpool -> conv 16 -> relu -> global avg pool -> 10 logits."""
    c1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
    c1b = rng.standard_normal(8).astype(np.float32) * 0.1
    c2 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    c2b = rng.standard_normal(16).astype(np.float32) * 0.1
    fw = rng.standard_normal((16, 10)).astype(np.float32) * 0.3
    fb = rng.standard_normal(10).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["image", "c1", "c1b"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["a2"]),
        helper.make_node("MaxPool", ["a2"], ["a3"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["a3", "c2", "c2b"], ["a4"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a4"], ["a5"]),
        helper.make_node("GlobalAveragePool", ["a5"], ["a6"]),
        helper.make_node("Flatten", ["a6"], ["a7"], axis=1),
        helper.make_node("Gemm", ["a7", "fw", "fb"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes,
        "cnn_small",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [init("c1", c1), init("c1b", c1b), init("c2", c2), init("c2b", c2b), init("fw", fw), init("fb", fb)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def digits_classifier():
    """A real tabular classifier: scikit-learn MLP trained on the bundled digits data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(xtr, ytr)
    print("digits test accuracy: %.3f" % clf.score(xte, yte))
    return to_onnx(
        clf,
        xtr[:1],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        final_types=None,
    )


ALL_TYPES = [
    ("BOOL", TensorProto.BOOL),
    ("UINT8", TensorProto.UINT8),
    ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32),
    ("UINT64", TensorProto.UINT64),
    ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16),
    ("INT32", TensorProto.INT32),
    ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16),
    ("FP32", TensorProto.FLOAT),
    ("FP64", TensorProto.DOUBLE),
]


def identity(name, types):
    """One Identity per datatype: IN_<T> -> OUT_<T>, shape [batch, n]."""
    nodes, ins, outs = [], [], []
    for tname, proto in types:
        nodes.append(helper.make_node("Identity", [f"IN_{tname}"], [f"OUT_{tname}"]))
        ins.append(helper.make_tensor_value_info(f"IN_{tname}", proto, ["batch", "n"]))
        outs.append(helper.make_tensor_value_info(f"OUT_{tname}", proto, ["batch", "n"]))
    g = helper.make_graph(nodes, name, ins, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def fixed_shape_add():
    """No batch dimension: x[2,3] + y[2,3] (int32), for shape-exact validation."""
    nodes = [helper.make_node("Add", ["x", "y"], ["sum"])]
    g = helper.make_graph(
        nodes,
        "add_fixed",
        [
            helper.make_tensor_value_info("x", TensorProto.INT32, [2, 3]),
            helper.make_tensor_value_info("y", TensorProto.INT32, [2, 3]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.INT32, [2, 3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(here, "models"))
    ap.add_argument("--test-models", default=os.path.join(here, "tests", "models"))
    a = ap.parse_args()
    rng = np.random.default_rng(20261122)
    save(mlp_tiny(rng), a.models, "mlp_tiny")
    save(cnn_small(rng), a.models, "cnn_small")
    save(digits_classifier(), a.models, "digits_mlp")
    save(identity("identity_types", ALL_TYPES), a.test_models, "identity_types")
    save(
        identity("identity_ort", [("BF16", TensorProto.BFLOAT16), ("BYTES", TensorProto.STRING)]),
        a.test_models,
        "identity_ort",
        'backend = "onnxruntime"\n',
    )
    save(fixed_shape_add(), a.test_models, "add_fixed")
    save(mlp_tiny(np.random.default_rng(20261122)), a.test_models, "mlp_tiny")
    os.makedirs(os.path.join(a.test_models, "broken", "1"), exist_ok=True)
    with open(os.path.join(a.test_models, "broken", "1", "model.onnx"), "wb") as f:
        f.write(b"this is not an onnx model")


if __name__ == "__main__":
    main()
