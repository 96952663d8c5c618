"""neoc bundles run by neorun's engine vs ONNX Runtime, in the same run.

Our side comes in up to four variants per model: `tract` (the portable
engine, with neorun's own kernels), `tract-stock` (the same bundle with
tract's kernels only: NEORUN_KERNELS=tract), `openvino-fp32` and, on a CPU with AVX-512-BF16 or AMX,
`openvino-bf16` (the OpenVINO engine, with the accuracy cost of bf16 against
fp32 taken from the bundle's verification record), `onnxruntime` (neorun's
onnxruntime engine on the same library as the Python side) and `auto`
(`--engine auto --target x86_64`: whatever neoc chose by measurement, named
in the table; the acceptance is that it is never slower than onnxruntime in
Python by more than the spread measured across rounds). Trees run on the
trees engine only.

For each model and variant: compile time and bundle size; then for 1 and 2 threads (and
batch 1, plus 64 for models with a symbolic batch axis) the latency median
and p99 of both sides, alternating rounds (ours, ORT, ours, ORT, ...) after
warm-up. Ours is timed in-process by `neorun bench` (Rust, no Python); ORT in
its Python process, so its numbers include the Python call overhead, which
is measured separately on an Identity model of the same input size and
reported in its own column. For the tabular samples also: process cold start
to first result and peak RSS of `neorun predict` vs a Python process running
onnxruntime on the same input.

usage: bench.py NEOC NEORUN MODELS_JSON OUT_JSON
MODELS_JSON: [{"name", "source", "onnx", "input_file"?: path, "tabular": bool, "trees": bool}]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


# `tract-stock`: the tract bundle run with tract's own kernels everywhere
# (NEORUN_KERNELS=tract), i.e. without neorun's convolution, product, depthwise,
# pooling and LRN kernels: what they gain, in the same run
STOCK = "tract-stock"


def ours(neorun, bundle, threads, batch, iters, variant=""):
    env = dict(os.environ, NEORUN_KERNELS="tract") if variant == STOCK else None
    r = subprocess.run([neorun, "bench", bundle, "--allow-unsigned", "--threads", str(threads), "--batch", str(batch),
                        "--iterations", str(iters), "--warmup", str(max(3, iters // 10)), "--json"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    d = json.loads(r.stdout)
    return d["median_us"], d["p99_us"]


def ort_session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def timed(sess, feeds, iters):
    for _ in range(max(3, iters // 10)):
        sess.run(None, feeds)
    t = []
    for _ in range(iters):
        a = time.perf_counter_ns()
        sess.run(None, feeds)
        t.append((time.perf_counter_ns() - a) / 1000)
    t.sort()
    return statistics.median(t), t[min(len(t) - 1, int(len(t) * 0.99))]


def feeds_for(sess, batch, rng):
    f = {}
    for i in sess.get_inputs():
        shape = [batch if (not isinstance(d, int) or d <= 0) else d for d in i.shape]
        if i.shape and not isinstance(i.shape[0], int):
            shape[0] = batch
        f[i.name] = rng.random(shape, dtype=np.float32)
    return f


def identity_overhead(feeds, threads, iters):
    """ORT's per-call cost in Python for inputs of this size, with no compute."""
    nodes, ins, outs = [], [], []
    for k, (n, x) in enumerate(feeds.items()):
        ins.append(helper.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, list(x.shape)))
        outs.append(helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, list(x.shape)))
        nodes.append(helper.make_node("Identity", [f"i{k}"], [f"o{k}"]))
    m = helper.make_model(helper.make_graph(nodes, "id", ins, outs), opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(m.SerializeToString())
    s = ort_session(f.name, threads)
    med, _ = timed(s, {f"i{k}": x for k, x in enumerate(feeds.values())}, iters)
    os.unlink(f.name)
    return med


def child_stats(cmd, runs=10):
    """Median wall time (ms) and peak RSS (MiB) of a process, over `runs` runs.

    Wall time is measured here; peak RSS by GNU time in a separate run:
    a child forked from this (large) Python process inherits its RSS
    high-water mark across exec, so wait4's ru_maxrss would be wrong."""
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd} failed")
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = int(r.stderr.strip().splitlines()[-1]) / 1024
    return statistics.median(walls), rss


def main():
    neoc, neorun, models_json, out_json = sys.argv[1:5]
    models = json.load(open(models_json))
    work = tempfile.mkdtemp(prefix="neoc-bench-")
    rows, per_model = [], []
    chosen = {}
    host_bf16 = any(f in open("/proc/cpuinfo").read() for f in (" avx512_bf16", " amx_bf16"))
    for m in models:
        name = m["name"]
        # our variants: tract (the portable default), and for ONNX models the
        # OpenVINO engine in fp32 and, where this CPU has bf16, in bf16
        variants = [("tract", ["--target", "host", "--engine", "tract"])]
        if not m.get("trees"):
            variants.append(("openvino-fp32", ["--target", "x86_64", "--engine", "openvino", "--precision", "fp32"]))
            if host_bf16:
                variants.append(("openvino-bf16", ["--target", "x86_64-avx512-bf16", "--engine", "openvino", "--precision", "bf16"]))
            variants.append(("onnxruntime", ["--target", "x86_64", "--engine", "onnxruntime"]))
            variants.append(("auto", ["--target", "x86_64"]))
        bundles = {}
        for variant, args in variants:
            bundle = os.path.join(work, f"{name}.{variant}.neo")
            t = time.perf_counter()
            r = subprocess.run([neoc, "compile", m["source"], *args, "--unsigned", "-o", bundle, "-q"],
                               capture_output=True, text=True)
            compile_s = time.perf_counter() - t
            if r.returncode != 0:
                err = r.stderr.strip().splitlines()[0] if r.stderr.strip() else "failed"
                per_model.append({"model": name, "engine": variant, "error": err})
                print(f"{name} {variant}: not compiled: {err}", flush=True)
                continue
            bundles[variant] = bundle
            info = {"model": name, "engine": variant, "compile_s": round(compile_s, 2), "bundle_bytes": os.path.getsize(bundle)}
            if variant != "tract":
                bm = json.loads(subprocess.run([neoc, "inspect", bundle, "--json"], capture_output=True, text=True).stdout)["manifest"]
                info["max_abs_error_vs_fp32"] = bm["verification"]["max_abs_error"]
                if variant == "auto":
                    info["chosen"] = f"{bm['engine']['name']} {bm['target']['precision']}"
                    chosen[name] = info["chosen"]
            per_model.append(info)
        if not bundles:
            continue
        if "tract" in bundles and not m.get("trees"):
            bundles[STOCK] = bundles["tract"]
        rng = np.random.default_rng(0)
        batches = [1, 64] if m.get("tabular") else [1]
        for threads in (1, 2):
            sess = ort_session(m["onnx"], threads)
            for batch in batches:
                feeds = feeds_for(sess, batch, rng)
                # enough iterations for ~1 s per round on our side
                probe_med, _ = timed(sess, feeds, 5)
                iters = int(min(2000, max(10, 1e6 / max(probe_med, 1))))
                o_med = {v: [] for v in bundles}
                o_p99 = {v: [] for v in bundles}
                r_med, r_p99 = [], []
                for _ in range(ROUNDS):
                    for v, bundle in bundles.items():
                        a, b = ours(neorun, bundle, threads, batch, iters, v)
                        o_med[v].append(a); o_p99[v].append(b)
                    a, b = timed(sess, feeds, iters)
                    r_med.append(a); r_p99.append(b)
                py = identity_overhead(feeds, threads, min(iters, 2000))
                for v in bundles:
                    row = {
                        "model": name, "engine": v, "threads": threads, "batch": batch, "iterations": iters, "rounds": ROUNDS,
                        "ours_median_us": statistics.median(o_med[v]), "ours_p99_us": statistics.median(o_p99[v]),
                        "ort_median_us": statistics.median(r_med), "ort_p99_us": statistics.median(r_p99),
                        "ort_python_overhead_us": py,
                        # how far the round medians of each side move: the noise a comparison must rise above
                        "ours_spread_us": max(o_med[v]) - min(o_med[v]), "ort_spread_us": max(r_med) - min(r_med),
                    }
                    if v == "auto":
                        row["chosen"] = chosen.get(name, "?")
                        row["auto_within_spread"] = (row["ours_median_us"]
                                                     <= row["ort_median_us"] + row["ours_spread_us"] + row["ort_spread_us"])
                    row["ratio"] = row["ours_median_us"] / row["ort_median_us"]
                    row["ratio_without_python"] = row["ours_median_us"] / max(row["ort_median_us"] - py, 1e-9)
                    rows.append(row)
                    print(f"{name:<14} {v:<13} t{threads} b{batch:<3} ours {row['ours_median_us']:>10.1f} µs (p99 {row['ours_p99_us']:.1f})"
                          f"  ort {row['ort_median_us']:>10.1f} µs (p99 {row['ort_p99_us']:.1f}, python {py:.1f})"
                          f"  ratio {row['ratio']:.2f} ({row['ratio_without_python']:.2f} without ORT's python call)", flush=True)
        info = {"model": name}
        bundle = bundles.get("tract") or next(iter(bundles.values()))
        if m.get("input_file"):
            cold_ours, rss_ours = child_stats([neorun, "predict", bundle, "--allow-unsigned", "--input", m["input_file"]])
            npy = os.path.join(work, name + ".npy")
            rows_csv = np.loadtxt(m["input_file"], delimiter=",", dtype=np.float32, ndmin=2)
            np.save(npy, rows_csv)
            script = ("import numpy as np, onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']);"
                      " x = np.load(sys.argv[2]); print(s.run(None, {s.get_inputs()[0].name: x})[0][:1])")
            cold_ort, rss_ort = child_stats([sys.executable, "-c", script, m["onnx"], npy])
            info.update({"cold_start_ms": round(cold_ours, 1), "peak_rss_mib": round(rss_ours, 1),
                         "ort_cold_start_ms": round(cold_ort, 1), "ort_peak_rss_mib": round(rss_ort, 1)})
        if len(info) > 1:
            per_model.append(info)
            print(f"{name}: {info}", flush=True)
    geo = {}
    for v in ("tract", STOCK, "openvino-fp32", "openvino-bf16", "onnxruntime", "auto"):
        for t in (1, 2):
            rs = [r["ratio"] for r in rows if r["engine"] == v and r["threads"] == t and r["batch"] == 1
                  and not r["model"].startswith("fraud")]
            if rs:
                geo[f"geomean_ratio_zoo_batch1_{v}_{t}t"] = float(np.exp(np.mean(np.log(rs))))
    json.dump({"schema_version": 2, "onnxruntime": ort.__version__, "rows": rows, "models": per_model, **geo},
              open(out_json, "w"), indent=1)
    print()
    print(f"{'model':<14} {'engine':<13} {'thr':>3} {'batch':>5} {'ours µs':>10} {'ours p99':>10} {'ORT µs':>10} {'ORT p99':>10} {'py µs':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:<14} {r['engine']:<13} {r['threads']:>3} {r['batch']:>5} {r['ours_median_us']:>10.1f} {r['ours_p99_us']:>10.1f}"
              f" {r['ort_median_us']:>10.1f} {r['ort_p99_us']:>10.1f} {r['ort_python_overhead_us']:>7.1f} {r['ratio']:>6.2f}")
    print()
    for p in per_model:
        print(p)
    for k, v in geo.items():
        print(f"{k}: {v:.2f}")
    autos = [r for r in rows if r["engine"] == "auto"]
    if autos:
        bad = [r for r in autos if not r["auto_within_spread"]]
        print(f"--engine auto (x86_64) vs onnxruntime in Python: {len(autos) - len(bad)} of {len(autos)} rows at or within the spread"
              + "".join(f"\n  slower: {r['model']} t{r['threads']} b{r['batch']} ({r['chosen']}): {r['ours_median_us']:.1f} vs {r['ort_median_us']:.1f} µs, spreads {r['ours_spread_us']:.1f}/{r['ort_spread_us']:.1f}" for r in bad))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
