"""Writes the recurrent models bench/recurrent/run.sh times into OUT (seeded weights).

- lstm-head: 16 steps, input 64, hidden 128, batch 1 (bench/exporters' head)
- lstm-speech: 100 steps, input 80, hidden 256, batch 1, two stacked layers
  (a streaming speech encoder's shape)
- bilstm: 50 steps, input 64, hidden 128, bidirectional, batch 1
- lstm-batch8: 32 steps, input 64, hidden 128, batch 8
- gru-head: 16 steps, input 64, hidden 128, linear_before_reset=1 (what
  PyTorch exports), batch 1
"""
import os, sys
import numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh

out = sys.argv[1]
rng = np.random.default_rng(0)


def w(shape, s=0.1):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def save(name, nodes, x_shape, y, inits):
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
                     [h.make_tensor_value_info(y, T.FLOAT, None)], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), os.path.join(out, f"{name}.onnx"))


def lstm(name, x, i, hid, dirs=1, direction="forward"):
    inits = [nh.from_array(w((dirs, 4 * hid, i)), f"{name}W"), nh.from_array(w((dirs, 4 * hid, hid)), f"{name}R"),
             nh.from_array(w((dirs, 8 * hid)), f"{name}B")]
    node = h.make_node("LSTM", [x, f"{name}W", f"{name}R", f"{name}B"], [f"{name}Y", f"{name}Yh"], hidden_size=hid,
                       direction=direction)
    return node, inits


n, inits = lstm("l", "x", 64, 128)
save("lstm-head", [n], [16, 1, 64], "lYh", inits)

n1, i1 = lstm("a", "x", 80, 256)
sq = nh.from_array(np.array([1], np.int64), "ax")
n2, i2 = lstm("b", "a2", 256, 256)
save("lstm-speech", [n1, h.make_node("Squeeze", ["aY", "ax"], ["a2"]), n2], [100, 1, 80], "bY", i1 + i2 + [sq])

n, inits = lstm("l", "x", 64, 128, dirs=2, direction="bidirectional")
save("bilstm", [n], [50, 1, 64], "lY", inits)

n, inits = lstm("l", "x", 64, 128)
save("lstm-batch8", [n], [32, 8, 64], "lY", inits)

H = 128
inits = [nh.from_array(w((1, 3 * H, 64)), "W"), nh.from_array(w((1, 3 * H, H)), "R"), nh.from_array(w((1, 6 * H)), "B")]
save("gru-head", [h.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Yh"], hidden_size=H, linear_before_reset=1)],
     [16, 1, 64], "Yh", inits)
