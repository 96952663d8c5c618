"""Models for the onnxruntime engine's tests, written with onnx.helper
(fixed seeds): an LSTM head (16 steps, batch 1, as streaming models run it),
a graph whose `If` condition depends on the input (tract cannot take it),
a model whose output tract types as a symbolic dimension (tract imports it
and cannot lower it), a model that takes NaN on purpose (its test set
feeds it), a tree ensemble with a set-membership split (the trees engine
refuses it), and
a fixed-batch model shipped with a batch-1 test set (declared with a
free batch at compile time, so onnxruntime itself refuses 2-row requests),
and a model over string features (a city name and an amount in, a score
and a string tier out, through ai.onnx.ml LabelEncoders, as sklearn-onnx
pipelines with categorical columns are).
Each goes into its own model tarball with model.onnx.

usage: make_models.py OUT_DIR
       make_models.py reference MODEL_TARBALL INPUTS_JSON
         (onnxruntime in Python on {"name": nested list}: prints the outputs as JSON)
"""
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tarball(out: Path, model: onnx.ModelProto, extra: dict | None = None) -> None:
    # IR 8 (opset 17's): what onnxruntime releases from 1.14 on read
    model.ir_version = 8
    onnx.checker.check_model(model)
    files = {"model.onnx": model.SerializeToString(), **(extra or {})}
    with tarfile.open(out, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))


def lstm() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    steps, feat, hidden, classes = 16, 8, 32, 4
    w = numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, feat)) * 0.3).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32), "R")
    b = numpy_helper.from_array((rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32), "B")
    head = numpy_helper.from_array((rng.standard_normal((hidden, classes)) * 0.3).astype(np.float32), "head")
    shape = numpy_helper.from_array(np.array([1, hidden], dtype=np.int64), "flat")
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], hidden_size=hidden),
        helper.make_node("Reshape", ["h", "flat"], ["h2"]),
        helper.make_node("MatMul", ["h2", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "lstm_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, feat])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes])],
        [w, r, b, head, shape],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="neoc-tests")


def data_if() -> onnx.ModelProto:
    # y = x * 2 where sum(x) > 0, else x - 1: the branch taken depends on the request
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes,
        "data_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [two, one, zero],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="neoc-tests")


def fixed_batch() -> tuple[onnx.ModelProto, dict]:
    three = numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three")
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])],
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [three],
    )
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    tests = {
        "test_data_set_0/input_0.pb": numpy_helper.from_array(x, "x").SerializeToString(),
        "test_data_set_0/output_0.pb": numpy_helper.from_array(x * 3, "y").SerializeToString(),
    }
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="neoc-tests"), tests


def shape_of() -> onnx.ModelProto:
    # y = the shape of x, as i64: tract imports it, then types the output as a
    # symbolic dimension a bundle cannot carry; onnxruntime runs it
    g = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["y"])],
        "shape_of",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="neoc-tests")


def nan_mask() -> tuple[onnx.ModelProto, dict]:
    # y = 1.0 where x is NaN, else 0.0: NaN is this model's input on purpose,
    # as its shipped test set shows
    g = helper.make_graph(
        [helper.make_node("IsNaN", ["x"], ["m"]), helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
        "nan_mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    x = np.array([[1.0, np.nan, -2.0, np.nan]], dtype=np.float32)
    tests = {
        "test_data_set_0/input_0.pb": numpy_helper.from_array(x, "x").SerializeToString(),
        "test_data_set_0/output_0.pb": numpy_helper.from_array(np.isnan(x).astype(np.float32), "y").SerializeToString(),
    }
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="neoc-tests"), tests


def member_tree() -> onnx.ModelProto:
    # one ai.onnx.ml TreeEnsemble (ml opset 5) whose root tests set
    # membership (x0 in {1, 3}): the trees engine refuses such splits;
    # onnxruntime runs them
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, post_transform=0,
        tree_roots=[0],
        nodes_modes=helper.make_tensor("nodes_modes", TensorProto.UINT8, (1,), [6]),
        nodes_featureids=[0],
        nodes_splits=helper.make_tensor("nodes_splits", TensorProto.FLOAT, (1,), [np.nan]),
        membership_values=helper.make_tensor("membership_values", TensorProto.FLOAT, (3,), [1.0, 3.0, np.nan]),
        nodes_trueleafs=[1], nodes_truenodeids=[0], nodes_falseleafs=[1], nodes_falsenodeids=[1],
        leaf_targetids=[0, 0],
        leaf_weights=helper.make_tensor("leaf_weights", TensorProto.FLOAT, (2,), [-1.0, 1.0]),
    )
    g = helper.make_graph(
        [node],
        "member_tree",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 5)],
                             producer_name="neoc-tests")


def string_features() -> tuple[onnx.ModelProto, dict]:
    # score = 0.5 * code(city) + amount; tier = "high" where score > 1, else
    # "low"; an unknown city codes as -1 (no StringNormalizer: onnxruntime's
    # needs the en_US.UTF-8 locale installed)
    cities = ["Paris", "Lyon", "São Paulo", "New York, NY"]
    nodes = [
        helper.make_node("LabelEncoder", ["city"], ["code"], domain="ai.onnx.ml", keys_strings=cities,
                         values_floats=[0.0, 1.0, 2.0, 3.0], default_float=-1.0),
        helper.make_node("Reshape", ["code", "col"], ["code2"]),
        helper.make_node("Mul", ["code2", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "amount"], ["score"]),
        helper.make_node("Greater", ["score", "one"], ["hi"]),
        helper.make_node("Cast", ["hi"], ["hi64"], to=TensorProto.INT64),
        helper.make_node("LabelEncoder", ["hi64"], ["tier"], domain="ai.onnx.ml", keys_int64s=[0, 1],
                         values_strings=["low", "high"], default_string="?"),
    ]
    g = helper.make_graph(
        nodes,
        "string_features",
        [helper.make_tensor_value_info("city", TensorProto.STRING, ["N"]),
         helper.make_tensor_value_info("amount", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("tier", TensorProto.STRING, ["N", 1])],
        [numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "col"),
         numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
         numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="neoc-tests")
    city = np.array(["Paris", "Lyon", "São Paulo", "Berlin", "New York, NY"], dtype=object)
    amount = np.array([[0.25], [0.5], [-0.5], [3.0], [0.0]], dtype=np.float32)
    code = np.array([[0.0], [1.0], [2.0], [-1.0], [3.0]], dtype=np.float32)
    score = 0.5 * code + amount
    tier = np.where(score > 1, "high", "low").astype(object)
    tests = {
        "test_data_set_0/input_0.pb": numpy_helper.from_array(city, "city").SerializeToString(),
        "test_data_set_0/input_1.pb": numpy_helper.from_array(amount, "amount").SerializeToString(),
        "test_data_set_0/output_0.pb": numpy_helper.from_array(score.astype(np.float32), "score").SerializeToString(),
        "test_data_set_0/output_1.pb": numpy_helper.from_array(tier, "tier").SerializeToString(),
    }
    return model, tests


def reference(model_tarball: str, inputs_json: str) -> None:
    import json

    import onnxruntime as ort

    with tarfile.open(model_tarball) as t:
        model = t.extractfile("model.onnx").read()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    feeds = {name: np.array(v, dtype=object if types[name] == "tensor(string)" else np.float32)
             for name, v in json.loads(Path(inputs_json).read_text()).items()}
    outs = sess.run(None, feeds)
    print(json.dumps({"version": ort.__version__,
                      "outputs": [{"name": o.name, "data": r.ravel().tolist()} for o, r in zip(sess.get_outputs(), outs)]}))


def main() -> None:
    if sys.argv[1] == "reference":
        reference(sys.argv[2], sys.argv[3])
        return
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tarball(out / "lstm.tar.gz", lstm())
    tarball(out / "data-if.tar.gz", data_if())
    tarball(out / "fixed-batch.tar.gz", *fixed_batch())
    tarball(out / "shape-of.tar.gz", shape_of())
    tarball(out / "nan-mask.tar.gz", *nan_mask())
    tarball(out / "member-tree.tar.gz", member_tree())
    tarball(out / "string-features.tar.gz", *string_features())
    # the same LSTM at IR 14, which onnxruntime 1.31 does not read
    m = lstm()
    m.ir_version = 14
    with tarfile.open(out / "ir14.tar.gz", "w:gz") as t:
        data = m.SerializeToString()
        info = tarfile.TarInfo("model.onnx")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
