"""Median of InferenceSession.run (µs) on seeded inputs of the model's declared shape, at THREADS."""
import sys, time
import numpy as np, onnxruntime as ort
o = ort.SessionOptions()
o.intra_op_num_threads, o.inter_op_num_threads = int(sys.argv[2]), 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
feed = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)}
for _ in range(30):
    s.run(None, feed)
ts = []
for _ in range(300):
    t = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - t)
print(f"{np.median(ts) * 1e6:.1f} µs")
