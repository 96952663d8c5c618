"""Prepares the ONNX model-zoo architectures the `onnx` wheel ships under
onnx/backend/test/data/light/ for the benchmark.

Those "light" models keep the graph but replace every weight tensor by a
`ConstantOfShape` of its shape. This script puts real random weights back
(fixed seed; He-normal for weights, small normal for biases and batch-norm
shifts, ones for batch-norm scales and variances) so that activations have
realistic magnitudes, then writes, per model, bench/out/zoo/NAME/model.onnx
and a test_data_set_0 (a random input and onnxruntime's output for it).
Nothing here is committed: it is regenerated from the wheel on every run.

`encoder` is not in the wheel: a BERT-base-shaped encoder (4 layers, hidden
256, 4 heads, FFN 1024, sequence 128; exact Gelu through Erf, opset-17
LayerNormalization) is built here with the same seeded weights.

usage: prepare.py OUT_DIR [NAME ...]
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def weights_for(name, shape, rng, role=None):
    n = name.lower()
    # batch-norm inputs by position (names vary: caffe2 exports call the
    # variance `_riv`): scale and variance 1, shift and mean small; a negative
    # variance would turn every activation after it into NaN
    if role in ("bn_scale", "bn_var"):
        return np.ones(shape, np.float32)
    if role in ("bn_bias", "bn_mean"):
        return (rng.standard_normal(shape) * 0.01).astype(np.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if any(k in n for k in ("var", "scale", "gamma")) or n.endswith("_s_0"):
        return np.ones(shape, np.float32)
    return (rng.standard_normal(shape) * 0.01).astype(np.float32)


def materialize(path, rng):
    m = onnx.load(path, load_external_data=False)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    roles = {}
    for node in g.node:
        if node.op_type == "BatchNormalization":
            for name, role in zip(node.input[1:], ("bn_scale", "bn_bias", "bn_mean", "bn_var")):
                roles[name] = role
    keep = []
    new_inits = []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = [int(x) for x in numpy_helper.to_array(inits[node.input[0]])]
            arr = weights_for(node.output[0], shape, rng, roles.get(node.output[0]))
            new_inits.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    shape_names = {n.input[0] for n in g.node if n.op_type == "ConstantOfShape"}
    kept_inits = [i for i in g.initializer if i.name not in shape_names]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    # weights listed as graph inputs (opset 9 style) would be overridable
    # inputs to onnxruntime, which then does not fold them: keep real inputs only
    init_names = {i.name for i in g.initializer}
    ins = [i for i in g.input if i.name not in init_names and i.name not in shape_names]
    del g.input[:]
    g.input.extend(ins)
    # from IR version 4 on, initializers need not be listed as graph inputs
    m.ir_version = max(m.ir_version, 4)
    onnx.checker.check_model(m)
    return m


def encoder(rng, layers=4, seq=128, hidden=256, heads=4, ffn=1024):
    nodes, inits = [], []
    dh = hidden // heads

    def w(name, shape, scale=None):
        arr = rng.standard_normal(shape).astype(np.float32) * (scale if scale is not None else np.sqrt(1.0 / shape[0]))
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    split_shape = const("split_shape", np.array([1, seq, heads, dh], np.int64))
    merge_shape = const("merge_shape", np.array([1, seq, hidden], np.int64))
    scale = const("scale", np.array(np.sqrt(dh), np.float32))
    half, one, sqrt2 = (const(n, np.array(v, np.float32)) for n, v in (("half", 0.5), ("one", 1.0), ("sqrt2", np.sqrt(2.0))))
    x = "hidden_states"
    for l in range(layers):
        p = f"l{l}_"
        heads_of = {}
        for t in "qkv":
            y = node("Add", [node("MatMul", [x, w(p + t + "_w", [hidden, hidden])], p + t + "_mm"), w(p + t + "_b", [hidden], 0.02)], p + t)
            y = node("Reshape", [y, split_shape], p + t + "_split")
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            heads_of[t] = node("Transpose", [y], p + t + "_heads", perm=perm)
        scores = node("Div", [node("MatMul", [heads_of["q"], heads_of["k"]], p + "qk"), scale], p + "scores")
        probs = node("Softmax", [scores], p + "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, heads_of["v"]], p + "ctx_heads")], p + "ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], p + "ctx")
        attn = node("Add", [node("MatMul", [ctx, w(p + "o_w", [hidden, hidden])], p + "o_mm"), w(p + "o_b", [hidden], 0.02)], p + "attn")
        x = node("LayerNormalization", [node("Add", [x, attn], p + "res1"), const(p + "ln1_g", np.ones(hidden, np.float32)),
                                        const(p + "ln1_b", np.zeros(hidden, np.float32))], p + "ln1", axis=-1, epsilon=1e-12)
        h = node("Add", [node("MatMul", [x, w(p + "f1_w", [hidden, ffn])], p + "f1_mm"), w(p + "f1_b", [ffn], 0.02)], p + "f1")
        erf = node("Erf", [node("Div", [h, sqrt2], p + "gelu_div")], p + "gelu_erf")
        h = node("Mul", [node("Mul", [h, half], p + "gelu_half"), node("Add", [erf, one], p + "gelu_1p")], p + "gelu")
        h = node("Add", [node("MatMul", [h, w(p + "f2_w", [ffn, hidden])], p + "f2_mm"), w(p + "f2_b", [hidden], 0.02)], p + "f2")
        x = node("LayerNormalization", [node("Add", [x, h], p + "res2"), const(p + "ln2_g", np.ones(hidden, np.float32)),
                                        const(p + "ln2_b", np.zeros(hidden, np.float32))], p + "ln2", axis=-1, epsilon=1e-12)
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))
    g = helper.make_graph(nodes, "encoder",
                          [helper.make_tensor_value_info("hidden_states", onnx.TensorProto.FLOAT, [1, seq, hidden])],
                          [helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, [1, seq, hidden])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def calibrate_logits(m, feeds):
    """Random weights saturate a final Softmax (one-hot outputs, on which any
    precision looks exact): scale the classifier feeding it so that its logits
    have unit spread, as a trained network's have."""
    g = m.graph
    soft = [n for n in g.node if n.op_type == "Softmax" and n.output[0] in {o.name for o in g.output}]
    if not soft:
        return
    logits = soft[0].input[0]
    producer = next((n for n in g.node if logits in n.output), None)
    if producer is None or producer.op_type not in ("Gemm", "MatMul", "Conv", "Add"):
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(helper.make_empty_tensor_value_info(logits))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    spread = float(np.std(sess.run([logits], feeds)[0]))
    if not np.isfinite(spread) or spread <= 1.0:
        return
    inits = {i.name: i for i in g.initializer}
    for name in producer.input[1:]:
        if name in inits:
            arr = numpy_helper.to_array(inits[name]) / spread
            inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or sorted(f[len("light_"):-5] for f in os.listdir(LIGHT) if f.endswith(".onnx"))
    for name in names:
        rng = np.random.default_rng(20261124)
        m = encoder(rng) if name == "encoder" else materialize(os.path.join(LIGHT, f"light_{name}.onnx"), rng)
        d = os.path.join(out, name)
        os.makedirs(os.path.join(d, "test_data_set_0"), exist_ok=True)
        onnx.save(m, os.path.join(d, "model.onnx"))
        inits = {i.name for i in m.graph.initializer}
        feeds = {}
        for k, i in enumerate(x for x in m.graph.input if x.name not in inits):
            shape = [dim.dim_value or 1 for dim in i.type.tensor_type.shape.dim]
            x = rng.random(shape, dtype=np.float32)
            feeds[i.name] = x
            with open(os.path.join(d, "test_data_set_0", f"input_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(x, i.name).SerializeToString())
        calibrate_logits(m, feeds)
        onnx.save(m, os.path.join(d, "model.onnx"))
        sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
        bad = [o.name for o, y in zip(sess.get_outputs(), outs) if not np.isfinite(y).all()]
        if bad:
            sys.exit(f"{name}: onnxruntime gives non-finite outputs {bad} with these weights; fix weights_for")
        for k, (o, y) in enumerate(zip(sess.get_outputs(), outs)):
            with open(os.path.join(d, "test_data_set_0", f"output_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(y, o.name).SerializeToString())
        print(name, "ok", {k: v.shape for k, v in feeds.items()})


if __name__ == "__main__":
    main()
