#!/usr/bin/env python3
"""Random tree ensembles trained by the real libraries, with their own outputs.

Usage: gen_cases.py OUT_DIR SEED COUNT

For each case writes OUT_DIR/case-K/: the model file (XGBoost JSON, LightGBM
text, or ONNX-ML exported by skl2onnx/onnxmltools), inputs.csv (missing values
as empty fields, plus rows of +/-inf), and expected.json with the outputs the
source engine computes (XGBoost `predict`, LightGBM `predict`, onnxruntime),
so that the Rust test can compare neoc's trees engine with them.
"""

import json
import os
import sys

import numpy as np


def write_csv(path, x):
    with open(path, "w") as f:
        for r in x:
            f.write(",".join("" if np.isnan(v) else repr(float(v)) for v in r) + "\n")


def data(rng, n, f, classes):
    x = rng.standard_normal((n, f)).astype(np.float32) * rng.uniform(0.5, 50, f).astype(np.float32)
    w = rng.standard_normal(f)
    score = x @ w / np.abs(w).sum() + 0.5 * np.sin(x[:, 0])
    if classes == 0:
        y = score + 0.1 * rng.standard_normal(n)
    else:
        qs = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
        y = np.searchsorted(qs, score)
    x[rng.random(x.shape) < rng.uniform(0, 0.15)] = np.nan
    return x, y


def probe_rows(rng, x):
    t = x[: min(len(x), 200)].copy()
    t[rng.random(t.shape) < 0.1] = np.nan
    extra = np.full((3, x.shape[1]), np.nan, np.float32)
    extra[1, :] = np.inf
    extra[2, :] = -np.inf
    return np.concatenate([t, extra]).astype(np.float32)


def xgb_case(rng, out):
    import xgboost as xgb

    kind = rng.choice(["binary", "multi", "reg"])
    classes = {"binary": 2, "multi": int(rng.integers(3, 6)), "reg": 0}[kind]
    f = int(rng.integers(2, 25))
    x, y = data(rng, 600, f, classes)
    params = dict(n_estimators=int(rng.integers(1, 40)), max_depth=int(rng.integers(1, 9)), learning_rate=0.3,
                  tree_method=str(rng.choice(["hist", "exact", "approx"])), n_jobs=1, random_state=int(rng.integers(1e6)))
    if kind == "reg":
        m = xgb.XGBRegressor(objective="reg:squarederror", **params)
    else:
        m = xgb.XGBClassifier(**params)
    m.fit(x, y)
    # XGBoost's two model formats: JSON, and UBJSON (its default since 2.1)
    m.get_booster().save_model(os.path.join(out, "xgboost-model." + str(rng.choice(["json", "ubj"]))))
    t = probe_rows(rng, x)
    if kind == "reg":
        return t, {"predictions": m.predict(t).astype(np.float32).reshape(len(t), -1)}
    return t, {"probabilities": m.predict_proba(t).astype(np.float32)}


def lgbm_case(rng, out):
    import lightgbm as lgb

    kind = rng.choice(["binary", "multi", "reg"])
    classes = {"binary": 2, "multi": int(rng.integers(3, 6)), "reg": 0}[kind]
    f = int(rng.integers(2, 25))
    x, y = data(rng, 600, f, classes)
    params = dict(n_estimators=int(rng.integers(1, 40)), num_leaves=int(rng.integers(2, 40)), learning_rate=0.2,
                  min_child_samples=int(rng.integers(2, 20)), n_jobs=1, random_state=int(rng.integers(1e6)),
                  deterministic=True, force_row_wise=True, verbose=-1)
    m = lgb.LGBMRegressor(**params) if kind == "reg" else lgb.LGBMClassifier(**params)
    m.fit(x, y)
    text = m.booster_.model_to_string().split("\nparameters:\n")[0] + "\n"
    path = os.path.join(out, "lightgbm-model.txt")
    with open(path, "w") as fh:
        fh.write(text)
    b = lgb.Booster(model_file=path)
    t = probe_rows(rng, x)
    p = b.predict(t)
    if kind == "reg":
        return t, {"predictions": p.astype(np.float32).reshape(len(t), 1)}
    if kind == "binary":
        return t, {"probabilities": np.stack([1 - p, p], axis=1).astype(np.float32)}
    return t, {"probabilities": p.astype(np.float32)}


ONNX_KINDS = ["gb-binary", "gb-reg", "xgb-multi", "v5"]


def onnx_case(rng, out, k=None):
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    # every kind in turn, so that a short run covers them all
    kind = ONNX_KINDS[(k // 3) % len(ONNX_KINDS)] if k is not None else rng.choice(ONNX_KINDS)
    f = int(rng.integers(2, 20))
    if kind == "xgb-multi":
        import xgboost as xgb
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        x, y = data(rng, 500, f, int(rng.integers(3, 5)))
        m = xgb.XGBClassifier(n_estimators=int(rng.integers(1, 20)), max_depth=int(rng.integers(1, 7)), n_jobs=1,
                              random_state=int(rng.integers(1e6)))
        m.fit(x, y)
        onx = convert_xgboost(m, initial_types=[("features", FloatTensorType([None, f]))], target_opset=15)
    else:
        # scikit-learn's trees take no NaN in training: fill them, keep NaN in probes
        x, y = data(rng, 500, f, 2 if kind == "gb-binary" else 0)
        if kind == "v5":
            return v5_case(rng, out, x, y)
        xf = np.nan_to_num(x)
        est = dict(n_estimators=int(rng.integers(1, 30)), max_depth=int(rng.integers(1, 6)), random_state=int(rng.integers(1e6)))
        m = GradientBoostingClassifier(**est) if kind == "gb-binary" else GradientBoostingRegressor(**est)
        m.fit(xf, y)
        opts = {id(m): {"zipmap": False}} if kind == "gb-binary" else None
        onx = to_onnx(m, xf[:1].astype(np.float32), options=opts, target_opset={"": 17, "ai.onnx.ml": 3})
    onx.graph.name = "case"
    data_bytes = onx.SerializeToString()
    with open(os.path.join(out, "model.onnx"), "wb") as fh:
        fh.write(data_bytes)
    t = probe_rows(rng, x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(data_bytes, so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: t})
    names = [o.name for o in sess.get_outputs()]
    res = {}
    for n, o in zip(names, outs):
        if o.dtype == np.float32 or o.dtype == np.float64:
            res["probabilities" if kind != "gb-reg" else "predictions"] = o.astype(np.float32).reshape(len(t), -1)
    return t, res


def v5_case(rng, out, x, y):
    """A scikit-learn regressor exported as TreeEnsembleRegressor, rewritten
    as the ai.onnx.ml opset 5 TreeEnsemble operator and run by onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    xf = np.nan_to_num(x)
    m = GradientBoostingRegressor(n_estimators=int(rng.integers(1, 25)), max_depth=int(rng.integers(1, 6)),
                                  random_state=int(rng.integers(1e6)))
    m.fit(xf, y)
    old = to_onnx(m, xf[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
    node = [n for n in old.graph.node if n.op_type == "TreeEnsembleRegressor"][0]
    a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
    tids, nids = a["nodes_treeids"], a["nodes_nodeids"]
    modes = [md.decode() for md in a["nodes_modes"]]
    key = list(zip(tids, nids))
    split_index, leaf_index = {}, {}
    for k, md in zip(key, modes):
        (leaf_index if md == "LEAF" else split_index)[k] = len(leaf_index if md == "LEAF" else split_index)
    weight = {}
    for t, n, w in zip(a["target_treeids"], a["target_nodeids"], a["target_weights"]):
        weight[(t, n)] = weight.get((t, n), 0.0) + w
    code = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
    nm, ns, nf_, nt, nfl, ntl, nfa, miss = [], [], [], [], [], [], [], []
    leaves = sorted(leaf_index, key=leaf_index.get)
    splits = sorted(split_index, key=split_index.get)
    pos = {k: i for i, k in enumerate(key)}
    for k in splits:
        i = pos[k]
        nm.append(code[modes[i]]); ns.append(a["nodes_values"][i]); nf_.append(a["nodes_featureids"][i])
        miss.append(a.get("nodes_missing_value_tracks_true", [0] * len(key))[i])
        for child, ids, leafs in ((a["nodes_truenodeids"][i], nt, ntl), (a["nodes_falsenodeids"][i], nfa, nfl)):
            ck = (k[0], child)
            if ck in leaf_index:
                ids.append(leaf_index[ck]); leafs.append(1)
            else:
                ids.append(split_index[ck]); leafs.append(0)
    roots = []
    for t in sorted(set(tids)):
        r = (t, 0)
        if r in split_index:
            roots.append(split_index[r])
        else:  # a one-leaf tree: a split whose both branches are that leaf
            roots.append(len(nm)); nm.append(0); ns.append(0.0); nf_.append(0); miss.append(0)
            nt.append(leaf_index[r]); ntl.append(1); nfa.append(leaf_index[r]); nfl.append(1)
    base = a.get("base_values", [0.0])[0]
    # the opset-5 operator has no base value: fold it into the first tree's leaves
    first_tree_leaves = {leaf_index[k] for k in leaves if k[0] == min(tids)}
    lw = [weight.get(k, 0.0) + (base if leaf_index[k] in first_tree_leaves else 0.0) for k in leaves]
    v5 = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", name="ensemble",
        aggregate_function=1, post_transform=0, n_targets=1, tree_roots=roots,
        nodes_modes=numpy_helper.from_array(np.array(nm, np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array(ns, np.float32)),
        nodes_featureids=nf_, nodes_truenodeids=nt, nodes_trueleafs=ntl, nodes_falsenodeids=nfa, nodes_falseleafs=nfl,
        nodes_missing_value_tracks_true=miss,
        leaf_targetids=[0] * len(leaves), leaf_weights=numpy_helper.from_array(np.array(lw, np.float32)))
    g = helper.make_graph([v5], "v5", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, x.shape[1]])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 10
    data_bytes = model.SerializeToString()
    with open(os.path.join(out, "model.onnx"), "wb") as fh:
        fh.write(data_bytes)
    t = probe_rows(rng, x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(data_bytes, so, providers=["CPUExecutionProvider"])
    (y_out,) = sess.run(None, {"X": t})
    return t, {"predictions": y_out.astype(np.float32).reshape(len(t), -1)}


def main():
    out_dir, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    makers = [xgb_case, lgbm_case, onnx_case]
    for k in range(count):
        d = os.path.join(out_dir, f"case-{k:03d}")
        os.makedirs(d, exist_ok=True)
        maker = makers[k % len(makers)]
        t, expected = maker(rng, d, k) if maker is onnx_case else maker(rng, d)
        write_csv(os.path.join(d, "inputs.csv"), t)
        with open(os.path.join(d, "expected.json"), "w") as fh:
            json.dump({"source": maker.__name__,
                       "outputs": {k2: v.reshape(-1).tolist() for k2, v in expected.items()}}, fh)


if __name__ == "__main__":
    main()
