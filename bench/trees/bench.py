#!/usr/bin/env python3
"""Tree-ensemble benchmark: neoc's trees engine vs ONNX Runtime, XGBoost's
inplace_predict and Treelite's compiled C (tl2cgen), side by side in one run.

Usage: bench.py NEORUN BUNDLE XGB_JSON ONNX OUT_JSON

Peers run in this process; neoc runs in-process in Rust (`neorun bench
--json`, which times the engine call only). Peer timings are reported raw and
net of the Python per-call floor (an ONNX Runtime call on a 1-element
Identity model for ORT; an empty function call for the others), measured in
the same run. Rounds alternate between systems; each number is the median
over rounds of the per-round median.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROUNDS = 5


def timeit(fn, iters):
    for _ in range(max(3, iters // 10)):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        ts.append((time.perf_counter_ns() - t0) / 1000.0)
    ts.sort()
    return ts[len(ts) // 2], ts[int((len(ts) - 1) * 0.99)]


def main():
    neorun, bundle, xgb_json, onnx_path, out_json = sys.argv[1:6]
    import onnx
    import onnxruntime as ort
    import xgboost as xgb
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    base = np.loadtxt(os.path.join(os.path.dirname(xgb_json), "sample.csv"), delimiter=",", dtype=np.float32)
    batches = {b: base[np.arange(b) % len(base)] + rng.normal(0, 0.01, (b, base.shape[1])).astype(np.float32) for b in (1, 64, 1024)}

    def ort_session(threads, model_bytes):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    onnx_bytes = open(onnx_path, "rb").read()
    ident = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    ident.ir_version = 8
    booster = xgb.Booster(model_file=xgb_json)

    tl = None
    try:
        import tl2cgen
        import treelite
        tmp = tempfile.mkdtemp()
        tm = treelite.frontend.load_xgboost_model(xgb_json)
        lib = os.path.join(tmp, "model.so")
        tl2cgen.export_lib(tm, toolchain="gcc", libpath=lib, params={"parallel_comp": 8}, nthread=1)
        tl = tl2cgen.Predictor(lib, nthread=1)
        tl_dm = {b: tl2cgen.DMatrix(x, dtype="float32") for b, x in batches.items()}
    except Exception as e:  # reported, never hidden
        print(f"tl2cgen unavailable: {e}", file=sys.stderr)

    results = {}

    def add(key, v):
        results.setdefault(key, []).append(v)

    for rnd in range(ROUNDS):
        for threads in (1, 2):
            sess = ort_session(threads, onnx_bytes)
            floor = ort_session(1, ident.SerializeToString())
            one = np.zeros(1, np.float32)
            add(("python-floor", "ort-identity", threads, 1), timeit(lambda: floor.run(None, {"x": one}), 2000))
            add(("python-floor", "empty-call", threads, 1), timeit(lambda: None, 2000))
            booster.set_param({"nthread": threads})
            for b, x in batches.items():
                if b == 1024 and threads == 1 and rnd > 1:
                    pass
                iters = {1: 2000, 64: 500, 1024: 60}[b]
                add(("onnxruntime", "", threads, b), timeit(lambda: sess.run(None, {"features": x}), iters))
                add(("xgboost-inplace", "", threads, b), timeit(lambda: booster.inplace_predict(x), iters))
                if tl is not None:
                    if threads == 1:
                        add(("tl2cgen", "", threads, b), timeit(lambda: tl.predict(tl_dm[b]), iters))
                out = subprocess.run([neorun, "bench", bundle, "--allow-unsigned", "--threads", str(threads), "--batch", str(b),
                                      "--iterations", str(iters), "--json"], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout)
                add(("neoc", "", threads, b), (r["median_us"], r["p99_us"]))

    summary = {}
    for (system, variant, threads, b), vals in results.items():
        med = statistics.median(v[0] for v in vals)
        p99 = statistics.median(v[1] for v in vals)
        summary[f"{system}{'/' + variant if variant else ''}|t{threads}|b{b}"] = {"median_us": med, "p99_us": p99}

    def get(system, t, b):
        return summary.get(f"{system}|t{t}|b{b}", {}).get("median_us")

    ort_floor = statistics.median(summary[f"python-floor/ort-identity|t{t}|b1"]["median_us"] for t in (1, 2))
    call_floor = statistics.median(summary[f"python-floor/empty-call|t{t}|b1"]["median_us"] for t in (1, 2))
    rows = []
    print(f"python floors: onnxruntime identity call {ort_floor:.2f} µs, empty call {call_floor:.2f} µs (subtracted in 'net')")
    print(f"{'threads':>7} {'batch':>5} {'neoc µs':>9} {'ORT net':>9} {'XGB net':>9} {'tl2cgen net':>11} {'neoc/ORT':>9} {'neoc/tl2cgen':>12}")
    for t in (1, 2):
        for b in (1, 64, 1024):
            ours = get("neoc", t, b)
            o = get("onnxruntime", t, b)
            xg = get("xgboost-inplace", t, b)
            tc = get("tl2cgen", t, b)
            o_net = o - ort_floor if o is not None else None
            xg_net = xg - call_floor if xg is not None else None
            tc_net = tc - call_floor if tc is not None else None
            row = {"threads": t, "batch": b, "neoc_us": ours, "ort_net_us": o_net, "xgboost_net_us": xg_net, "tl2cgen_net_us": tc_net,
                   "neoc_over_ort": ours / o_net if o_net else None, "neoc_over_tl2cgen": ours / tc_net if tc_net else None}
            rows.append(row)
            fmt = lambda v, w=9: f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"
            print(f"{t:>7} {b:>5} {fmt(ours)} {fmt(o_net)} {fmt(xg_net)} {fmt(tc_net, 11)} {fmt(row['neoc_over_ort'])} {fmt(row['neoc_over_tl2cgen'], 12)}")
    with open(out_json, "w") as f:
        json.dump({"schema_version": 1, "floors_us": {"ort_identity": ort_floor, "empty_call": call_floor},
                   "raw": summary, "table": rows}, f, indent=1)


if __name__ == "__main__":
    main()
