#!/usr/bin/env python3
"""Generate neoc's sample models, their reference outputs and the local registry.

Run through `models/generate.sh`, which makes the pinned venv. Everything this
script writes is committed; running it again with the pinned versions gives
the same models and reference outputs (fixed seeds, single-threaded training,
fixed tar/gzip timestamps).

For each model NAME it writes models/NAME/:
  model file(s)        the model as its framework saves it
  model.json           SageMaker Neo-style input configuration
  sample.csv|json      a request for `neorun predict`
  expected.json        outputs of an engine other than ours (onnxruntime or
                       XGBoost itself) for that request
  model.tar.gz         SageMaker-style tarball: model file + model.json +
                       test_data_set_0/ (ONNX model-zoo style TensorProto
                       inputs and reference outputs, used by neoc's verify stage)
and models/registry/NAME/, an OCI image layout whose tag VERSION points at an
artifact with that tarball as its single layer, so `neoc compile NAME:VERSION`
resolves it.

models/bad/ holds malformed inputs used by the tests.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRY = os.path.join(HERE, "registry")
MTIME = 315532800  # 1980-01-01, like reproducible-builds tooling
OPSET = 17

MODEL_MEDIA_TYPE = "application/vnd.neoc.model.v1"
LAYER_MEDIA_TYPE = "application/vnd.neoc.model.layer.v1.tar+gzip"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


# ---------------------------------------------------------------- data set
def fraud_dataset(n=20000, seed=20261124):
    """A synthetic credit-card-fraud table shaped like the Kaggle one:
    Time, V1..V28 (PCA-like components), Amount; about 2% positives."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 28)).astype(np.float64)
    time = rng.uniform(0, 172800, n)
    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    # fraud depends non-linearly on a few components and on the amount
    score = (
        1.8 * v[:, 0] - 1.4 * v[:, 2] + 1.1 * v[:, 9] * v[:, 3]
        + 0.9 * np.abs(v[:, 13]) + 0.6 * np.log1p(amount) - 0.4 * np.sin(time / 13750.0)
    )
    threshold = np.quantile(score, 0.98)
    y = (score + 0.3 * rng.standard_normal(n) > threshold).astype(np.int64)
    x = np.concatenate([time[:, None], v, amount[:, None]], axis=1).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- helpers
def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def tensor_pb(array, name):
    return numpy_helper.from_array(np.ascontiguousarray(array), name).SerializeToString()


def make_tarball(path, members):
    """members: list of (arcname, bytes). Deterministic gzip'd tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for name, _ in members:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = MTIME
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
            gz.write(raw.getvalue())


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciLayout:
    """Minimal writer of an OCI image layout (one per repository)."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        write_json(os.path.join(root, "oci-layout"), {"imageLayoutVersion": "1.0.0"})
        self.manifests = []

    def blob(self, data):
        digest = sha256(data)
        with open(os.path.join(self.root, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return digest

    def tag(self, tag, tarball, annotations):
        with open(tarball, "rb") as f:
            layer = f.read()
        empty = b"{}"
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": MODEL_MEDIA_TYPE,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": self.blob(empty), "size": 2,
                       "data": "e30="},
            "layers": [{
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": self.blob(layer),
                "size": len(layer),
                "annotations": {"org.opencontainers.image.title": "model.tar.gz"},
            }],
            "annotations": annotations,
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self.manifests.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": MODEL_MEDIA_TYPE,
            "digest": self.blob(data),
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        })

    def close(self):
        write_json(os.path.join(self.root, "index.json"),
                   {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": self.manifests})


def publish(name, version, framework, members, input_config, extra=()):
    """extra: (tag, tarball path, framework) of further artifacts in the same repository."""
    d = os.path.join(HERE, name)
    tarball = os.path.join(d, "model.tar.gz")
    make_tarball(tarball, members)
    layout = OciLayout(os.path.join(REGISTRY, name))
    for tag, path, fw in ((version, tarball, framework),) + tuple(extra):
        layout.tag(tag, path, {
            "dev.neoc.model.name": name,
            "dev.neoc.model.version": version,
            "dev.neoc.model.framework": fw,
            "dev.neoc.model.input-config": json.dumps(input_config, sort_keys=True),
            "org.opencontainers.image.created": "1980-01-01T00:00:00Z",
        })
    layout.close()


def ort_run(model_bytes, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(None, feeds)


def expected_doc(engine, names, arrays):
    return {
        "engine": engine,
        "outputs": [
            {"name": n, "shape": list(a.shape), "datatype": str(a.dtype), "data": a.reshape(-1).tolist()}
            for n, a in zip(names, arrays)
        ],
    }


def write_csv(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(",".join(repr(float(v)) for v in r) + "\n")


def pick_sample(x, y, k=8, seed=7):
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)[:2]
    neg = rng.choice(np.flatnonzero(y == 0), k - len(pos), replace=False)
    idx = np.concatenate([neg[:3], pos, neg[3:]])
    return x[idx]


# ---------------------------------------------------------------- fraud-mlp
def fraud_mlp(x, y):
    from sklearn.neural_network import MLPClassifier

    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    xs = (x - mean) / std
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=60, random_state=0,
                        early_stopping=False, alpha=1e-4)
    clf.fit(xs, y)
    w = [c.astype(np.float32) for c in clf.coefs_]
    b = [c.astype(np.float32) for c in clf.intercepts_]
    # fold standardisation into the first layer: ((x-m)/s) W = x (W/s) - (m/s) W
    w0 = (w[0] / std[:, None]).astype(np.float32)
    b0 = (b[0] - (mean / std) @ w[0]).astype(np.float32)
    inits = [
        numpy_helper.from_array(w0, "fc1.weight"), numpy_helper.from_array(b0, "fc1.bias"),
        numpy_helper.from_array(w[1], "fc2.weight"), numpy_helper.from_array(b[1], "fc2.bias"),
        numpy_helper.from_array(w[2], "fc3.weight"), numpy_helper.from_array(b[2], "fc3.bias"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "fc1.weight", "fc1.bias"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "fc2.weight", "fc2.bias"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "fc3.weight", "fc3.bias"], ["logit"], name="fc3"),
        helper.make_node("Sigmoid", ["logit"], ["p_fraud"], name="sigmoid"),
        helper.make_node("Sub", ["one", "p_fraud"], ["p_legit"], name="complement"),
        helper.make_node("Concat", ["p_legit", "p_fraud"], ["probabilities"], axis=1, name="concat"),
    ]
    graph = helper.make_graph(
        nodes, "fraud_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="neoc-models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    d = os.path.join(HERE, "fraud-mlp")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    sample = pick_sample(x, y)
    write_csv(os.path.join(d, "sample.csv"), sample)
    names, outs = ort_run(data, {"features": sample})
    write_json(os.path.join(d, "expected.json"), expected_doc("onnxruntime", names, outs))
    cfg = {"features": ["N", 30]}
    write_json(os.path.join(d, "model.json"), {"Framework": "ONNX", "DataInputConfig": cfg})
    tv_in = sample[:4]
    _, tv_out = ort_run(data, {"features": tv_in})
    publish("fraud-mlp", "1", "onnx", [
        ("model.onnx", data),
        ("model.json", open(os.path.join(d, "model.json"), "rb").read()),
        ("test_data_set_0/input_0.pb", tensor_pb(tv_in, "features")),
        ("test_data_set_0/output_0.pb", tensor_pb(tv_out[0], "probabilities")),
    ], cfg)
    print(f"fraud-mlp: train acc {clf.score(xs, y):.4f}, positives {y.mean():.4f}")


# ---------------------------------------------------------------- image-cnn
def image_cnn():
    rng = np.random.default_rng(42)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = []
    nodes = []
    cin, x = 3, "image"
    for i, cout in enumerate([8, 16, 32]):
        w = he((cout, cin, 3, 3), cin * 9)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
        if i < 2:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2],
                                          name=f"pool{i}"))
            x = f"p{i}"
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"))
    wf = he((32, 10), 32)
    bf = (rng.standard_normal(10) * 0.05).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "fc.weight"), numpy_helper.from_array(bf, "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, "image_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="neoc-models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    d = os.path.join(HERE, "image-cnn")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    # a smooth synthetic "photo": gradients plus a blob, normalised like ImageNet inputs
    yy, xx = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    img = np.stack([xx, yy, np.exp(-4 * (xx ** 2 + yy ** 2)) * 2 - 1]).astype(np.float32)[None]
    img += (rng.standard_normal(img.shape) * 0.1).astype(np.float32)
    img = np.round(img, 4).astype(np.float32)
    write_json(os.path.join(d, "sample.json"), {"inputs": img.tolist()})
    names, outs = ort_run(data, {"image": img})
    write_json(os.path.join(d, "expected.json"), expected_doc("onnxruntime", names, outs))
    cfg = {"image": [1, 3, 64, 64]}
    write_json(os.path.join(d, "model.json"), {"Framework": "ONNX", "DataInputConfig": cfg})
    img2 = np.round(rng.uniform(-1, 1, img.shape), 4).astype(np.float32)
    _, out2 = ort_run(data, {"image": img2})
    publish("image-cnn", "1", "onnx", [
        ("model.onnx", data),
        ("model.json", open(os.path.join(d, "model.json"), "rb").read()),
        ("test_data_set_0/input_0.pb", tensor_pb(img, "image")),
        ("test_data_set_0/output_0.pb", tensor_pb(outs[0], "probabilities")),
        ("test_data_set_1/input_0.pb", tensor_pb(img2, "image")),
        ("test_data_set_1/output_0.pb", tensor_pb(out2[0], "probabilities")),
    ], cfg)
    print("image-cnn: written")


# ---------------------------------------------------------------- fraud-xgb
def fraud_xgb(x, y):
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    clf = xgb.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.1, objective="binary:logistic",
                            tree_method="hist", n_jobs=1, random_state=0, base_score=0.5)
    clf.fit(x, y)
    d = os.path.join(HERE, "fraud-xgb")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "xgboost-model.json")
    clf.get_booster().save_model(path)
    # re-serialise with sorted keys so the committed file is stable
    with open(path) as f:
        doc = json.load(f)
    with open(path, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
    onx = convert_xgboost(clf, initial_types=[("features", FloatTensorType([None, 30]))],
                          target_opset=15)
    onx.graph.name = "fraud_xgb"  # onnxmltools names graphs with a random uuid
    onnx_bytes = onx.SerializeToString()
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(onnx_bytes)
    sample = pick_sample(x, y)
    write_csv(os.path.join(d, "sample.csv"), sample)
    proba = clf.predict_proba(sample).astype(np.float32)
    write_json(os.path.join(d, "expected.json"), expected_doc("xgboost", ["probabilities"], [proba]))
    # the same rows with missing values (NaN; empty CSV fields), routed by XGBoost's default directions
    rng = np.random.default_rng(11)
    holes = sample.copy()
    holes[rng.random(holes.shape) < 0.3] = np.nan
    with open(os.path.join(d, "sample-missing.csv"), "w") as f:
        for r in holes:
            f.write(",".join("" if np.isnan(v) else repr(float(v)) for v in r) + "\n")
    proba_holes = clf.predict_proba(holes).astype(np.float32)
    write_json(os.path.join(d, "expected-missing.json"), expected_doc("xgboost", ["probabilities"], [proba_holes]))
    tv_in = np.concatenate([sample, holes])
    tv_proba = clf.predict_proba(tv_in).astype(np.float32)
    tv_label = clf.predict(tv_in).astype(np.int64)
    test_data = [
        ("test_data_set_0/input_0.pb", tensor_pb(tv_in, "features")),
        ("test_data_set_0/output_0.pb", tensor_pb(tv_label, "label")),
        ("test_data_set_0/output_1.pb", tensor_pb(tv_proba, "probabilities")),
    ]
    cfg = {"features": ["N", 30]}
    write_json(os.path.join(d, "model.json"), {"Framework": "XGBOOST", "DataInputConfig": cfg})
    model_json = open(path, "rb").read()
    # the ONNX-ML export of the same model, as its own tarball and registry tag 1-onnx
    onnx_tar = os.path.join(d, "model-onnx.tar.gz")
    make_tarball(onnx_tar, [("model.onnx", onnx_bytes)] + test_data)
    publish("fraud-xgb", "1", "xgboost", [
        ("xgboost-model.json", model_json),
        ("model.json", open(os.path.join(d, "model.json"), "rb").read()),
    ] + test_data, cfg, extra=(("1-onnx", onnx_tar, "onnx"),))
    print(f"fraud-xgb: train acc {clf.score(x, y):.4f}")


# ---------------------------------------------------------------- fraud-lgbm
def fraud_lgbm(x, y):
    import lightgbm as lgb

    clf = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, learning_rate=0.1, random_state=0,
                             n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1)
    # some missing values in training, so that splits learn a NaN direction
    xm = x.copy()
    xm[np.random.default_rng(5).random(xm.shape) < 0.02] = np.nan
    clf.fit(xm, y)
    d = os.path.join(HERE, "fraud-lgbm")
    os.makedirs(d, exist_ok=True)
    text = clf.booster_.model_to_string()
    # drop the parameters block: it records the absolute data path and thread count
    text = text.split("\nparameters:\n")[0] + "\n"
    path = os.path.join(d, "lightgbm-model.txt")
    with open(path, "w") as f:
        f.write(text)
    booster = lgb.Booster(model_file=path)
    sample = pick_sample(x, y)
    write_csv(os.path.join(d, "sample.csv"), sample)
    p = booster.predict(sample).astype(np.float64)
    proba = np.stack([1 - p, p], axis=1).astype(np.float32)
    write_json(os.path.join(d, "expected.json"), expected_doc("lightgbm", ["probabilities"], [proba]))
    cfg = {"features": ["N", 30]}
    write_json(os.path.join(d, "model.json"), {"Framework": "LIGHTGBM", "DataInputConfig": cfg})
    rng = np.random.default_rng(12)
    holes = sample.copy()
    holes[rng.random(holes.shape) < 0.3] = np.nan
    tv_in = np.concatenate([sample, holes]).astype(np.float32)
    tp = booster.predict(tv_in)
    tv_proba = np.stack([1 - tp, tp], axis=1).astype(np.float32)
    tv_label = (tp > 0.5).astype(np.int64)
    publish("fraud-lgbm", "1", "lightgbm", [
        ("lightgbm-model.txt", text.encode()),
        ("model.json", open(os.path.join(d, "model.json"), "rb").read()),
        ("test_data_set_0/input_0.pb", tensor_pb(tv_in, "features")),
        ("test_data_set_0/output_0.pb", tensor_pb(tv_label, "label")),
        ("test_data_set_0/output_1.pb", tensor_pb(tv_proba, "probabilities")),
    ], cfg)
    print(f"fraud-lgbm: train acc {clf.score(x, y):.4f}")


# ---------------------------------------------------------------- bad inputs
def bad_models():
    d = os.path.join(HERE, "bad")
    os.makedirs(d, exist_ok=True)
    # operators no CPU target of neoc can run: two custom ones and a real ONNX op
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("FancyActivation", ["a"], ["b"], name="custom_act", domain="com.example"),
        helper.make_node("Relu", ["b"], ["c"], name="ok_relu2"),
        helper.make_node("MysteryNorm", ["c"], ["y"], name="custom_norm", domain="com.example"),
    ]
    g = helper.make_graph(nodes, "unsupported", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    with open(os.path.join(d, "unsupported-ops.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    # an operator tract runs but cannot write to NNEF (the bundle's model format)
    # and neoc's own registry does not carry yet (Rem, which it used to be, now is)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])
    outs = [
        helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 4]),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("z", TensorProto.UINT8, []),
    ]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["a"], ["q", "s", "z"], name="dyn_quant")]
    g = helper.make_graph(nodes, "unserializable", [a], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    with open(os.path.join(d, "unserializable-ops.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    with open(os.path.join(d, "garbage.onnx"), "wb") as f:
        f.write(bytes((i * 37 + 11) % 256 for i in range(4096)))
    print("bad models: written")


def main():
    if os.path.isdir(REGISTRY):
        shutil.rmtree(REGISTRY)
    x, y = fraud_dataset()
    fraud_mlp(x, y)
    image_cnn()
    fraud_xgb(x, y)
    fraud_lgbm(x, y)
    bad_models()


if __name__ == "__main__":
    sys.exit(main())
