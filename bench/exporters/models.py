"""Writes the models and inputs bench/exporters/run.sh times into OUT."""
import json, os, sys
import numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh

out = sys.argv[1]
rng = np.random.default_rng(0)

def save(nodes, name, ins, outs, inits):
    g = h.make_graph(nodes, name, ins, outs, inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), os.path.join(out, f"{name}.onnx"))

# detector-like: four stride-2 3x3 convolutions and a 1x1 head
chans, nodes, inits, x = [3, 16, 32, 64, 128], [], [], "images"
for i in range(4):
    w = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * (2 / (9 * chans[i])) ** 0.5).astype(np.float32)
    inits += [nh.from_array(w, f"w{i}"), nh.from_array(np.zeros(chans[i + 1], np.float32), f"b{i}")]
    nodes += [h.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
              h.make_node("Relu", [f"c{i}"], [f"r{i}"])]
    x = f"r{i}"
inits.append(nh.from_array((rng.standard_normal((85, 128, 1, 1)) * 0.1).astype(np.float32), "head"))
nodes.append(h.make_node("Conv", [x, "head"], ["out"], kernel_shape=[1, 1]))
save(nodes, "det", [h.make_tensor_value_info("images", T.FLOAT, [1, 3, 416, 416])],
     [h.make_tensor_value_info("out", T.FLOAT, [1, 85, 26, 26])], inits)
img = rng.standard_normal((1, 3, 416, 416)).astype(np.float32)
np.save(os.path.join(out, "img.npy"), img)
json.dump({"inputs": img.tolist()}, open(os.path.join(out, "img.json"), "w"))

# LSTM head: 16 steps, input 64, hidden 128, batch 1
S, I, H = 16, 64, 128
inits = [nh.from_array((rng.standard_normal((1, 4 * H, I)) * 0.1).astype(np.float32), "W"),
         nh.from_array((rng.standard_normal((1, 4 * H, H)) * 0.1).astype(np.float32), "R"),
         nh.from_array(np.zeros((1, 8 * H), np.float32), "B"),
         nh.from_array((rng.standard_normal((H, 10)) * 0.1).astype(np.float32), "Wo"),
         nh.from_array(np.array([0], np.int64), "ax")]
save([h.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Yh"], hidden_size=H),
      h.make_node("Squeeze", ["Yh", "ax"], ["h"]), h.make_node("MatMul", ["h", "Wo"], ["logits"])],
     "lstm", [h.make_tensor_value_info("x", T.FLOAT, [S, 1, I])], [h.make_tensor_value_info("logits", T.FLOAT, [1, 10])], inits)

# MobileNetV3-style: expand 1x1, HardSwish, depthwise 3x3, SE with HardSigmoid, project 1x1, residual
inits, nodes, x, C = [], [], "x", 16
def w(name, shape, s=0.2):
    inits.append(nh.from_array((rng.standard_normal(shape) * s).astype(np.float32), name))
    return name
for b in range(4):
    E = C * 4
    nodes += [h.make_node("Conv", [x, w(f"e{b}", (E, C, 1, 1))], [f"e{b}o"]), h.make_node("HardSwish", [f"e{b}o"], [f"h{b}"]),
              h.make_node("Conv", [f"h{b}", w(f"d{b}", (E, 1, 3, 3))], [f"d{b}o"], group=E, pads=[1, 1, 1, 1]),
              h.make_node("HardSwish", [f"d{b}o"], [f"dh{b}"]), h.make_node("GlobalAveragePool", [f"dh{b}"], [f"g{b}"]),
              h.make_node("Conv", [f"g{b}", w(f"s1{b}", (E // 4, E, 1, 1)), w(f"s1b{b}", (E // 4,))], [f"s1o{b}"]),
              h.make_node("Relu", [f"s1o{b}"], [f"s1r{b}"]),
              h.make_node("Conv", [f"s1r{b}", w(f"s2{b}", (E, E // 4, 1, 1)), w(f"s2b{b}", (E,))], [f"s2o{b}"]),
              h.make_node("HardSigmoid", [f"s2o{b}"], [f"hs{b}"]), h.make_node("Mul", [f"dh{b}", f"hs{b}"], [f"se{b}"]),
              h.make_node("Conv", [f"se{b}", w(f"p{b}", (C, E, 1, 1))], [f"p{b}o"]), h.make_node("Add", [x, f"p{b}o"], [f"r{b}"])]
    x = f"r{b}"
save(nodes, "mb", [h.make_tensor_value_info("x", T.FLOAT, [1, C, 56, 56])], [h.make_tensor_value_info(x, T.FLOAT, [1, C, 56, 56])], inits)
