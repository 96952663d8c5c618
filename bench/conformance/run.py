#!/usr/bin/env python3
"""ONNX backend node tests through neoc: the conformance figure.

Generates the node test data with onnx's own generator, packs each test
(model.onnx + test_data_set_*) as a model tarball, compiles it with
`neoc compile --target host --unsigned --json`, and classifies the outcome
by neoc's exit status:
  0  compiled into a bundle, and the bundle's outputs (run by the runtime's
     loader) matched the test's expected outputs within atol 1e-5, rtol 1e-3
  4  refused by the coverage pre-flight (unsupported operator, or one the
     bundle format cannot carry)
  3  compiled, but outputs beyond tolerance
  1  other errors (import, typing, inputs the bundle cannot carry, …)
Prints the counts and the most frequent reasons; writes bench/out/conformance.json
(conformance-ENGINE.json for another engine).

CONF_ENGINE=onnxruntime compiles with `--engine onnxruntime` (ORT_DYLIB_PATH
set to the venv's onnxruntime) and also runs every test in onnxruntime's
Python API on the same data and tolerances, to report how many of the tests
onnxruntime passes in Python pass through neoc too. CONF_LIMIT=N runs the
first N tests only; CONF_FILTER=REGEX those whose name it matches (e.g.
`string|label_encoder|regex|strnormalizer`).

Usage: run.py NEOC OUT_DIR
"""
import collections
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor


def generate(node_dir):
    """Writes onnx's node test cases (model + test_data_set_*) as the wheel no
    longer ships them; cases whose data are not plain tensors are counted as
    skipped (sequences, maps, optionals)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper
    from onnx.backend.test.case import node

    def plain(t):
        return isinstance(t, (np.ndarray, np.generic, TensorProto))

    if os.path.isdir(node_dir) and os.listdir(node_dir):
        return json.load(open(os.path.join(node_dir, "skipped.json")))
    os.makedirs(node_dir, exist_ok=True)
    skipped = []
    for case in node.collect_testcases():
        if not all(plain(t) for ins, outs in case.data_sets for t in list(ins) + list(outs)):
            skipped.append(case.name)
            continue
        d = os.path.join(node_dir, case.name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (ins, outs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds, exist_ok=True)
            for kind, tensors, values in (("input", ins, case.model.graph.input), ("output", outs, case.model.graph.output)):
                for j, t in enumerate(tensors):
                    with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                        if isinstance(t, TensorProto):
                            f.write(t.SerializeToString())
                        else:
                            f.write(numpy_helper.from_array(np.asarray(t), values[j].name if j < len(values) else "").SerializeToString())
    json.dump(skipped, open(os.path.join(node_dir, "skipped.json"), "w"))
    return skipped


def ort_python_passes(test_dir):
    """onnxruntime in Python on the test's own data: whether every output
    matches the expected one within atol 1e-5, rtol 1e-3."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    try:
        sess = ort.InferenceSession(os.path.join(test_dir, "model.onnx"), providers=["CPUExecutionProvider"])
        sets = sorted(d for d in os.listdir(test_dir) if d.startswith("test_data_set_"))
        for ds in sets:
            def load(kind, n):
                t = TensorProto()
                t.ParseFromString(open(os.path.join(test_dir, ds, f"{kind}_{n}.pb"), "rb").read())
                return numpy_helper.to_array(t)
            feeds = {i.name: load("input", j) for j, i in enumerate(sess.get_inputs())}
            outs = sess.run(None, feeds)
            for j, got in enumerate(outs):
                want = load("output", j)
                if got.shape != want.shape:
                    return False
                if want.dtype.kind in "fc":
                    if not np.allclose(got, want, atol=1e-5, rtol=1e-3, equal_nan=True):
                        return False
                elif not np.array_equal(got, want):
                    return False
        return True
    except Exception:
        return False


def main():
    neoc, out_dir = sys.argv[1], sys.argv[2]
    engine = os.environ.get("CONF_ENGINE", "auto")
    env = dict(os.environ)
    if engine == "onnxruntime" and not env.get("ORT_DYLIB_PATH"):
        import onnxruntime
        env["ORT_DYLIB_PATH"] = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    node_dir = os.path.join(out_dir, "onnx-node-tests")
    skipped = generate(node_dir)
    tests = sorted(d for d in os.listdir(node_dir) if os.path.isfile(os.path.join(node_dir, d, "model.onnx")))
    if os.environ.get("CONF_FILTER"):
        tests = [t for t in tests if re.search(os.environ["CONF_FILTER"], t)]
    tests = tests[: int(os.environ.get("CONF_LIMIT", len(tests)))]
    work = tempfile.mkdtemp(prefix="neoc-conf-")

    def run(test):
        src = os.path.join(node_dir, test)
        tgz = os.path.join(work, test + ".tar.gz")
        with tarfile.open(tgz, "w:gz") as tar:
            for root, _, files in os.walk(src):
                for f in files:
                    p = os.path.join(root, f)
                    tar.add(p, arcname=os.path.relpath(p, src))
        r = subprocess.run([neoc, "compile", tgz, "--target", "host", "--unsigned", "-q", "-o", os.path.join(work, test + ".neo"),
                            "--tolerance", "1e-5", "--rtol", "1e-3", "--engine", engine], capture_output=True, text=True,
                           timeout=120, env=env)
        lines = r.stderr.strip().splitlines()
        reason = lines[0] if lines else ""
        if r.returncode == 4 and len(lines) > 1:
            # "  - node `n`: Op (why)" -> "Op (why)"
            reason = "; ".join(sorted({l.split(": ", 1)[-1] for l in lines[1:] if l.strip().startswith("- node")}))
        for p in (tgz, os.path.join(work, test + ".neo")):
            if os.path.exists(p):
                os.remove(p)
        return test, r.returncode, reason

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(run, tests))
    counts = collections.Counter(code for _, code, _ in results)
    labels = {0: "pass (bundle matches expected outputs)", 3: "compiled, outputs beyond tolerance",
              4: "refused by coverage pre-flight", 1: "other error"}
    total = len(results)
    print(f"ONNX backend node tests, --engine {engine}: {total} with tensor data (+{len(skipped)} with sequence/map/optional data, not run)")
    for code in (0, 3, 4, 1):
        print(f"  {labels[code]:42} {counts.get(code, 0):5}  ({100 * counts.get(code, 0) / total:.1f}%)")
    other = [code for code in counts if code not in labels]
    if other:
        print(f"  unexpected exit codes: {other}")
    def norm(reason):
        return re.sub(r"`[^`]*`", "`…`", re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", reason))[:110]
    for code in (4, 1, 3):
        top = collections.Counter(norm(r) for _, c, r in results if c == code).most_common(6)
        if top:
            print(f"\nmost frequent reasons ({labels[code]}):")
            for reason, n in top:
                print(f"  {n:4}  {reason}")
    ort_py = None
    if engine == "onnxruntime":
        ort_py = {t: ort_python_passes(os.path.join(node_dir, t)) for t in tests}
        passing = [t for t in tests if ort_py[t]]
        by_neoc = {t: c for t, c, _ in results}
        through = [t for t in passing if by_neoc[t] == 0]
        print(f"\nonnxruntime in Python passes {len(passing)} of {total}; of those, neoc --engine onnxruntime passes "
              f"{len(through)} ({100 * len(through) / max(1, len(passing)):.1f}%)")
        lost = collections.Counter(norm(r) for t, c, r in results if ort_py[t] and c != 0).most_common(8)
        for reason, n in lost:
            print(f"  {n:4}  {reason}")
    name = "conformance.json" if engine == "auto" else f"conformance-{engine}.json"
    json.dump({"schema_version": 1, "engine": engine, "total": total, "skipped_non_tensor": len(skipped), "counts": {labels[k]: counts.get(k, 0) for k in labels},
               "results": [{"test": t, "exit": c, "reason": r, **({"onnxruntime_python": ort_py[t]} if ort_py else {})}
                           for t, c, r in results]},
              open(os.path.join(out_dir, name), "w"), indent=1)


if __name__ == "__main__":
    main()
