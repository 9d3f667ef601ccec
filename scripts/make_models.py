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


def scale():
    """Y = 2 X + 1, FP32 [batch, n]: every output row is checkable from its input."""
    nodes = [
        helper.make_node("Mul", ["X", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["Y"]),
    ]
    g = helper.make_graph(
        nodes,
        "scale",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "n"])],
        [init("two", np.float32(2.0)), init("one", np.float32(1.0))],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def slow(layers=400, width=512):
    """X [batch, 512] through `layers` x (MatMul W, Tanh) with one shared W: about
    100 M multiply-adds per row, so a request's cost is set by its batch size. W is
    computed in the graph from a Range (the runtime folds it at load), which keeps
    the file small."""
    nodes, w_inits = wave_matrix(width)
    prev = "X"
    for i in range(layers):
        out = "Y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    g = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", width])],
        w_inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def wave_matrix(width):
    """Nodes and initialisers computing W [width, width] in the graph from a Range
    (the runtime folds it at load), which keeps the file small."""
    nodes = [
        helper.make_node("Range", ["r0", "rn", "r1"], ["ramp"]),
        helper.make_node("Mul", ["ramp", "freq"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node("Mul", ["wave", "norm"], ["flat"]),
        helper.make_node("Reshape", ["flat", "wshape"], ["W"]),
    ]
    inits = [
        init("r0", np.float32(0)),
        init("rn", np.float32(width * width)),
        init("r1", np.float32(1)),
        init("freq", np.float32(0.7371)),
        init("norm", np.float32(1.7 / np.sqrt(width))),
        init("wshape", np.array([width, width], dtype=np.int64)),
    ]
    return nodes, inits


def gather():
    """Y[b, 0] = X[b, IDX[b, 0]]: an index outside 0..3 makes the runtime fail."""
    nodes = [helper.make_node("GatherElements", ["X", "IDX"], ["Y"], axis=1)]
    g = helper.make_graph(
        nodes,
        "gather",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("IDX", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def add_k(k, heavy_layers=0, width=512):
    """Y = X + k, FP32 [batch, 4]: a version's answers say which version computed
    them. With `heavy_layers`, a side path of that many 512-wide MatMul+Tanh layers
    (multiplied by 0 and added) makes it slower without changing its answers."""
    nodes = [helper.make_node("Add", ["X", "k"], ["base"] if heavy_layers else ["Y"])]
    inits = [init("k", np.float32(k))]
    if heavy_layers:
        w_nodes, w_inits = wave_matrix(width)
        nodes += w_nodes + [helper.make_node("Tile", ["X", "reps"], ["wide"])]
        prev = "wide"
        for i in range(heavy_layers):
            nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
            prev = f"t{i}"
        nodes += [
            helper.make_node("ReduceSum", [prev, "axis1"], ["s"], keepdims=1),
            helper.make_node("Mul", ["s", "zero"], ["nothing"]),
            helper.make_node("Add", ["base", "nothing"], ["Y"]),
        ]
        inits += w_inits + [
            init("reps", np.array([1, width // 4], dtype=np.int64)),
            init("axis1", np.array([1], dtype=np.int64)),
            init("zero", np.float32(0)),
        ]
    g = helper.make_graph(
        nodes,
        "add_k",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


def lifecycle_fixtures(folder):
    """Model files the lifecycle tests copy into version folders of their own
    repositories: add1..add3 (Y = X + k), add_slow (Y = X + 9, slower) and add_slower
    (Y = X + 9, ten times add_slow's work: a canary whose p99 stands far above any noise)."""
    os.makedirs(folder, exist_ok=True)
    for k in (1, 2, 3):
        onnx.save(add_k(k), os.path.join(folder, f"add{k}.onnx"))
    onnx.save(add_k(9, heavy_layers=200), os.path.join(folder, "add_slow.onnx"))
    onnx.save(add_k(9, heavy_layers=2000), os.path.join(folder, "add_slower.onnx"))
    print("wrote", folder)


def mlp(name, sizes, rng):
    """A ReLU MLP with the given layer sizes, input INPUT0, output OUTPUT0."""
    nodes, inits, prev = [], [], "INPUT0"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [init(f"w{i}", w), init(f"b{i}", bias)]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["OUTPUT0" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            prev = f"r{i}"
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def bench_models(repo):
    """The load benchmark's models: the tiny MLP and a compute-heavy one."""
    save(mlp_tiny(np.random.default_rng(20261122)), repo, "mlp_tiny")
    save(mlp("mlp_heavy", [256, 1024, 1024, 1024, 10], np.random.default_rng(3)), repo, "mlp_heavy")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(here, "models"))
    ap.add_argument("--test-models", default=os.path.join(here, "tests", "models"))
    ap.add_argument("--bench-models", help="write only the benchmark models, into this folder")
    a = ap.parse_args()
    if a.bench_models:
        bench_models(a.bench_models)
        return
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
    save(scale(), a.test_models, "scale", "max_queue_delay_us = 2000\ninstance_count = 2\n")
    save(
        slow(),
        a.test_models,
        "slow",
        "max_batch_size = 256\ndynamic_batching = false\nmax_queue_size = 2\nintra_op_threads = 1\n",
    )
    save(gather(), a.test_models, "gather", 'backend = "onnxruntime"\n')
    lifecycle_fixtures(os.path.join(os.path.dirname(a.test_models), "fixtures", "lifecycle"))
    os.makedirs(os.path.join(a.test_models, "broken", "1"), exist_ok=True)
    with open(os.path.join(a.test_models, "broken", "1", "model.onnx"), "wb") as f:
        f.write(b"this is not an onnx model")


if __name__ == "__main__":
    main()
