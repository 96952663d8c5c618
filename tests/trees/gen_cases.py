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
    m.get_booster().save_model(os.path.join(out, "xgboost-model.json"))
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


def onnx_case(rng, out):
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    kind = rng.choice(["gb-binary", "gb-reg", "xgb-multi"])
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


def main():
    out_dir, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    makers = [xgb_case, lgbm_case, onnx_case]
    for k in range(count):
        d = os.path.join(out_dir, f"case-{k:03d}")
        os.makedirs(d, exist_ok=True)
        maker = makers[k % len(makers)]
        t, expected = maker(rng, d)
        write_csv(os.path.join(d, "inputs.csv"), t)
        with open(os.path.join(d, "expected.json"), "w") as fh:
            json.dump({"source": maker.__name__,
                       "outputs": {k2: v.reshape(-1).tolist() for k2, v in expected.items()}}, fh)


if __name__ == "__main__":
    main()
