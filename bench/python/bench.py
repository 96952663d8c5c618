"""neorun.Model.predict vs onnxruntime.InferenceSession.run, same process,
same rows (models/*/sample.csv repeated), one thread each (onnxruntime
intra_op_num_threads=1, neorun's default of one per run), rounds alternating.
Then 4 Python threads sharing one model: throughput vs one thread.

    bench.py BUNDLE_DIR OUT.json"""
import json
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

import neorun

out_dir, out_json = sys.argv[1:3]
rounds = int(os.environ.get("ROUNDS", "5"))
iters = int(os.environ.get("ITER", "2000"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rows = np.loadtxt("models/fraud-xgb/sample.csv", delimiter=",", dtype=np.float32)


def timed(fn, x):
    for _ in range(50):
        fn(x)
    t = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn(x)
        t.append(time.perf_counter_ns() - t0)
    return statistics.median(t) / 1000.0


results = []
for name in ("fraud-xgb", "fraud-mlp"):
    m = neorun.Model(os.path.join(out_dir, name + ".neo"), allow_unsigned=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f"models/{name}/model.onnx", so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    for batch in (1, 64):
        x = np.ascontiguousarray(np.resize(rows, (batch, 30)))
        # same answers first
        want = sess.run(None, {in_name: x})[-1]
        got = m.predict(x)["probabilities"]
        np.testing.assert_allclose(got, np.asarray(want, dtype=np.float32).reshape(got.shape), atol=1e-5)
        nr, ox = [], []
        for _ in range(rounds):
            nr.append(timed(m.predict, x))
            ox.append(timed(lambda a: sess.run(None, {in_name: a}), x))
        results.append({"model": name, "batch": batch, "neorun_us": statistics.median(nr),
                        "onnxruntime_us": statistics.median(ox)})
    # threads: 4 Python threads on one Model, batch 64
    x = np.ascontiguousarray(np.resize(rows, (64, 30)))
    n = 2000

    def work():
        for _ in range(n):
            m.predict(x)

    t0 = time.perf_counter()
    work()
    one = n / (time.perf_counter() - t0)
    ts = [threading.Thread(target=work) for _ in range(4)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    four = 4 * n / (time.perf_counter() - t0)
    results.append({"model": name, "threads": 4, "calls_per_s_1_thread": one, "calls_per_s_4_threads": four})

print(f"CPU: {cpu}, {os.cpu_count()} CPUs; medians of {rounds} rounds x {iters} calls")
print(f"{'model':<10} {'batch':>5} {'neorun µs':>10} {'onnxruntime µs':>15} {'ratio':>6}")
for r in results:
    if "batch" in r:
        print(f"{r['model']:<10} {r['batch']:>5} {r['neorun_us']:>10.1f} {r['onnxruntime_us']:>15.1f} "
              f"{r['neorun_us'] / r['onnxruntime_us']:>6.2f}")
for r in results:
    if "threads" in r:
        print(f"{r['model']}: batch 64, 1 thread {r['calls_per_s_1_thread']:.0f} calls/s, "
              f"4 threads on one Model {r['calls_per_s_4_threads']:.0f} calls/s")
json.dump({"cpu": cpu, "results": results}, open(out_json, "w"), indent=1)
