//! Operators whose NNEF form is not in tract's core registries travel in the
//! bundle all the same: Rem through neoc's own registry, SDPA (ONNX
//! Attention) through tract-transformers'. Built as ONNX with the `onnx`
//! package, run by onnxruntime for the expected values, compiled and run by
//! neoc/neorun.

use std::process::Command;

use neoc_e2e::*;

#[test]
fn onnx_mod_both_modes_compiles_and_matches_onnxruntime() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
# fmod=1: C's fmod on floats; fmod=0: Python's sign-of-divisor remainder, on integers
nodes = [helper.make_node("Mod", ["a", "b"], ["fmod"], fmod=1),
         helper.make_node("Floor", ["a"], ["fa"]), helper.make_node("Floor", ["b"], ["fb"]),
         helper.make_node("Cast", ["fa"], ["ia"], to=TensorProto.INT32),
         helper.make_node("Cast", ["fb"], ["ib"], to=TensorProto.INT32),
         helper.make_node("Mod", ["ia", "ib"], ["imod"], fmod=0)]
outs = [helper.make_tensor_value_info("fmod", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("imod", TensorProto.INT32, ["N", 4])]
m = helper.make_model(helper.make_graph(nodes, "mod", [a, b], outs), opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
onnx.save(m, sys.argv[1] + "/mod.onnx")
x = np.array([[7.0, -7.0, 7.5, 9.0], [-3.25, 10.0, 0.5, -8.0]], np.float32)
y = np.array([[3.0, 3.0, 2.0, 4.5], [2.0, -4.0, 1.25, 3.0]], np.float32)
s = ort.InferenceSession(sys.argv[1] + "/mod.onnx", providers=["CPUExecutionProvider"])
r = s.run(None, {"a": x, "b": y})
json.dump({"inputs": {"a": x.tolist(), "b": y.tolist()}, "fmod": r[0].ravel().tolist(), "imod": r[1].ravel().tolist()}, open(sys.argv[1] + "/mod.json", "w"))
import os
from onnx import numpy_helper
t = sys.argv[1] + "/test_data_set_0"
os.makedirs(t)
for k, (n, v) in enumerate([("a", x), ("b", y)]):
    open(f"{t}/input_{k}.pb", "wb").write(numpy_helper.from_array(v, n).SerializeToString())
for k, (n, v) in enumerate(zip(["fmod", "imod"], r)):
    open(f"{t}/output_{k}.pb", "wb").write(numpy_helper.from_array(v, n).SerializeToString())
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("mod.json")).unwrap()).unwrap();
    // seeded random inputs in [0, 1) floor to integer divisors of zero: a clean error, not a panic
    let seeded = ["compile", "mod.onnx", "--target", "host", "--key", "k.key", "-o", "mod.neo"];
    let e = fails(run("neoc", d, &[&seeded[..], &["--input", "a=2,4", "--input", "b=2,4"]].concat(), &[], None), 1);
    assert!(e.contains("divisor of zero") && e.contains("test_data_set_"), "{e}");
    assert!(!d.join("mod.neo").exists());
    // with representative inputs shipped in the tarball it compiles
    let st =
        Command::new("tar").current_dir(d).args(["czf", "mod.tar.gz", "mod.onnx", "test_data_set_0"]).status().unwrap();
    assert!(st.success());
    let out = ok(run(
        "neoc",
        d,
        &["compile", "mod.tar.gz", "--target", "host", "--key", "k.key", "-o", "mod.neo", "--json"],
        &[],
        None,
    ));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["engine"]["registries"], serde_json::json!(["tract_onnx", "neoc"]));
    std::fs::write(d.join("in.json"), serde_json::to_vec(&serde_json::json!({"inputs": doc["inputs"]})).unwrap())
        .unwrap();
    let p = ok(predict(d, "mod.neo", "in.json"));
    let got: serde_json::Value = serde_json::from_str(&p).unwrap();
    for (i, name) in ["fmod", "imod"].iter().enumerate() {
        let g: Vec<f64> = got["outputs"][i]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let w: Vec<f64> = doc[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&g, &w, 1e-6);
    }
}

#[test]
fn an_engine_panic_on_a_request_is_an_error_not_a_crash() {
    // integer remainder by zero panics inside tract: neorun answers with an error
    let dir = scratch();
    let d = dir.path();
    int_mod_bundle(d);
    std::fs::write(d.join("ok.json"), br#"{"inputs": {"a": [[7, -7]], "b": [[3, 3]]}}"#).unwrap();
    let p = ok(predict(d, "m.neo", "ok.json"));
    assert!(p.contains("[1,2]"), "{p}");
    std::fs::write(d.join("zero.json"), br#"{"inputs": {"a": [[7, -7]], "b": [[0, 3]]}}"#).unwrap();
    let o = predict(d, "m.neo", "zero.json");
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains("divisor of zero"), "{e}");
    // the input made the model fail: exit 4 (bad request), as the server answers it 424
    assert_eq!(o.status.code(), Some(4), "{e}");
}

#[test]
fn onnx_attention_is_carried_as_tract_transformers_sdpa() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import sys, os, json, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
shape = [1, 2, 4, 8]
ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("q", "k", "v")]
out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
node = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)
m = helper.make_model(helper.make_graph([node], "attn", ins, [out]), opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
onnx.save(m, sys.argv[1] + "/attn.onnx")
rng = np.random.default_rng(7)
feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in ("q", "k", "v")}
y = ort.InferenceSession(sys.argv[1] + "/attn.onnx", providers=["CPUExecutionProvider"]).run(None, feeds)[0]
t = sys.argv[1] + "/test_data_set_0"; os.makedirs(t)
for k, n in enumerate(("q", "k", "v")):
    open(f"{t}/input_{k}.pb", "wb").write(numpy_helper.from_array(feeds[n], n).SerializeToString())
open(f"{t}/output_0.pb", "wb").write(numpy_helper.from_array(y, "y").SerializeToString())
json.dump({"inputs": {n: feeds[n].tolist() for n in feeds}, "y": y.ravel().tolist()}, open(sys.argv[1] + "/attn.json", "w"))
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = Command::new("tar")
        .current_dir(d)
        .args(["czf", "attn.tar.gz", "attn.onnx", "test_data_set_0"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = ok(run(
        "neoc",
        d,
        &["compile", "attn.tar.gz", "--target", "host", "--key", "k.key", "-o", "attn.neo", "--json"],
        &[],
        None,
    ));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["engine"]["registries"], serde_json::json!(["tract_onnx", "tract_transformers"]));
    assert_eq!(s["bundles"][0]["verification"]["independent"]["cases"], 1);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("attn.json")).unwrap()).unwrap();
    std::fs::write(d.join("in.json"), serde_json::to_vec(&serde_json::json!({"inputs": doc["inputs"]})).unwrap())
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&ok(predict(d, "attn.neo", "in.json"))).unwrap();
    let g: Vec<f64> = got["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let w: Vec<f64> = doc["y"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&g, &w, 1e-5);
}
