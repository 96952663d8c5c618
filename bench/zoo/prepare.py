"""Prepares the ONNX model-zoo architectures the `onnx` wheel ships under
onnx/backend/test/data/light/ for the benchmark.

Those "light" models keep the graph but replace every weight tensor by a
`ConstantOfShape` of its shape. This script puts real random weights back
(fixed seed; He-normal for weights, small normal for biases and batch-norm
shifts, ones for batch-norm scales and variances) so that activations have
realistic magnitudes, then writes, per model, bench/out/zoo/NAME/model.onnx
and a test_data_set_0 (a random input and onnxruntime's output for it).
Nothing here is committed: it is regenerated from the wheel on every run.

usage: prepare.py OUT_DIR [NAME ...]
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def weights_for(name, shape, rng):
    n = name.lower()
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
    keep = []
    new_inits = []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = [int(x) for x in numpy_helper.to_array(inits[node.input[0]])]
            arr = weights_for(node.output[0], shape, rng)
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


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or sorted(f[len("light_"):-5] for f in os.listdir(LIGHT) if f.endswith(".onnx"))
    for name in names:
        rng = np.random.default_rng(20261124)
        m = materialize(os.path.join(LIGHT, f"light_{name}.onnx"), rng)
        d = os.path.join(out, name)
        os.makedirs(os.path.join(d, "test_data_set_0"), exist_ok=True)
        onnx.save(m, os.path.join(d, "model.onnx"))
        inits = {i.name for i in m.graph.initializer}
        sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {}
        for k, i in enumerate(x for x in m.graph.input if x.name not in inits):
            shape = [dim.dim_value or 1 for dim in i.type.tensor_type.shape.dim]
            x = rng.random(shape, dtype=np.float32)
            feeds[i.name] = x
            with open(os.path.join(d, "test_data_set_0", f"input_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(x, i.name).SerializeToString())
        outs = sess.run(None, feeds)
        for k, (o, y) in enumerate(zip(sess.get_outputs(), outs)):
            with open(os.path.join(d, "test_data_set_0", f"output_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(y, o.name).SerializeToString())
        print(name, "ok", {k: v.shape for k, v in feeds.items()})


if __name__ == "__main__":
    main()
