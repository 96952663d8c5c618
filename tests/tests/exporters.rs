//! What real exporters write (#21): dynamic axes with `value_info`,
//! arbitrary text in `metadata_props`, stateful (streaming) models, `If`
//! switched by an input, typing errors in neoc's words, one coverage report,
//! and bundles that do not depend on the folder a model was compiled from.
//! Each model is the minimal repro of a class, built with the `onnx` package;
//! expected values come from onnxruntime.

use std::path::Path;
use std::process::Command;

use neoc_e2e::*;

/// Writes the fixtures (see the script) into `d`.
fn fixtures(d: &Path) {
    let script = r#"
import json, os, random, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper
d = sys.argv[1]
def save(g, name, props=None):
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    if props:
        h.set_model_props(m, props)
    onnx.save(m, os.path.join(d, name))

# 1. dynamic axes: value_info keeps the export's symbol
save(h.make_graph([h.make_node("Relu", ["x"], ["t"]), h.make_node("Neg", ["t"], ["y"])], "g",
     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])], [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
     value_info=[h.make_tensor_value_info("t", T.FLOAT, ["batch", 4])]), "dyn.onnx")

# 2. text NNEF cannot quote: an apostrophe, quotes, a backslash, a newline, non-ASCII
relu = lambda: h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
     [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
text = "it's \"quoted\" \\ back\nslash — 日本語\ttab"
save(relu(), "apos.onnx", {"note": text, "character's dict": "a'b\"c"})
json.dump({"note": text, "character's dict": "a'b\"c"}, open(os.path.join(d, "apos.json"), "w"))

# 4. If switched by a sample rate; the branches give differently shaped outputs
then_g = h.make_graph([h.make_node("Relu", ["x"], ["o1"])], "then", [], [h.make_tensor_value_info("o1", T.FLOAT, [1, 4])])
else_g = h.make_graph([h.make_node("Concat", ["x", "x"], ["o2"], axis=1)], "else", [], [h.make_tensor_value_info("o2", T.FLOAT, [1, 8])])
save(h.make_graph([h.make_node("Constant", [], ["k"], value=h.make_tensor("k", T.INT64, [], [16000])),
     h.make_node("Equal", ["sr", "k"], ["c"]), h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="rate_switch")], "g",
     [h.make_tensor_value_info("x", T.FLOAT, [1, 4]), h.make_tensor_value_info("sr", T.INT64, [])],
     [h.make_tensor_value_info("y", T.FLOAT, None)]), "if.onnx")

# 4b. If on a shape: decided once --input pins it
t3 = h.make_graph([h.make_node("Relu", ["x"], ["o1"])], "then", [], [h.make_tensor_value_info("o1", T.FLOAT, None)])
e3 = h.make_graph([h.make_node("Neg", ["x"], ["o2"])], "else", [], [h.make_tensor_value_info("o2", T.FLOAT, None)])
save(h.make_graph([h.make_node("Shape", ["x"], ["s"]), h.make_node("Gather", ["s", "i1"], ["n"], axis=0),
     h.make_node("Greater", ["n", "lim"], ["c"]), h.make_node("If", ["c"], ["y"], then_branch=t3, else_branch=e3, name="long_input")], "g",
     [h.make_tensor_value_info("x", T.FLOAT, ["batch", "len"])], [h.make_tensor_value_info("y", T.FLOAT, None)],
     [numpy_helper.from_array(np.array(1, np.int64), "i1"), numpy_helper.from_array(np.array(2, np.int64), "lim")]), "ifshape.onnx")

# 5. one report: an operator nothing implements, an onnxruntime contrib one, one the bundle cannot
# carry, a data-dependent If
t2 = h.make_graph([h.make_node("Relu", ["x"], ["a"])], "then", [], [h.make_tensor_value_info("a", T.FLOAT, [1, 1, 4, 4])])
e2 = h.make_graph([h.make_node("Neg", ["x"], ["b"])], "else", [], [h.make_tensor_value_info("b", T.FLOAT, [1, 1, 4, 4])])
save(h.make_graph([h.make_node("Unique", ["x"], ["u"], name="uniq"),
     h.make_node("MaxPool", ["x"], ["mp", "idx"], kernel_shape=[2, 2], name="pool"),
     h.make_node("FusedMatMul", ["x", "x"], ["fm"], domain="com.microsoft", name="fused"),
     h.make_node("Greater", ["flag", "zero"], ["c"]),
     h.make_node("If", ["c"], ["y"], then_branch=t2, else_branch=e2, name="branch")], "g",
     [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4]), h.make_tensor_value_info("flag", T.FLOAT, [])],
     [h.make_tensor_value_info(n, T.FLOAT, None) for n in ["y", "mp", "u"]],
     initializer=[h.make_tensor("zero", T.FLOAT, [], [0.0])]), "multi.onnx")
# an input with no shape at all, and one whose typing fails with every fact known
save(h.make_graph([h.make_node("Add", ["a", "b"], ["y"], name="add1")], "g",
     [h.make_tensor_value_info("a", T.FLOAT, None), h.make_tensor_value_info("b", T.FLOAT, [1, 3])],
     [h.make_tensor_value_info("y", T.FLOAT, None)]), "noshape.onnx")
save(h.make_graph([h.make_node("MatMul", ["a", "w"], ["y"], name="proj")], "g",
     [h.make_tensor_value_info("a", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, None)],
     initializer=[numpy_helper.from_array(np.ones((3, 2), np.float32), "w")]), "badmatmul.onnx")

# 7. the same model in two folders
for f in ["ra", "rb"]:
    os.makedirs(os.path.join(d, f))
    save(relu(), os.path.join(f, "x.onnx"))

# 3. a streaming LSTM: frame [1,8] beside state [2,1,16] (h and c stacked, as Silero VAD does)
rng = np.random.default_rng(7)
H, I = 16, 8
W = (rng.standard_normal((1, 4 * H, I)) * 0.3).astype(np.float32)
R = (rng.standard_normal((1, 4 * H, H)) * 0.3).astype(np.float32)
B = (rng.standard_normal((1, 8 * H)) * 0.1).astype(np.float32)
Wo = (rng.standard_normal((H, 3)) * 0.5).astype(np.float32)
nodes = [h.make_node("Unsqueeze", ["frame", "ax0"], ["x3"]),
         h.make_node("Split", ["state", "two"], ["h0", "c0"], axis=0),
         h.make_node("LSTM", ["x3", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], hidden_size=H, name="lstm"),
         h.make_node("Concat", ["Yh", "Yc"], ["new_state"], axis=0),
         h.make_node("Squeeze", ["Yh", "ax0"], ["h1"]),
         h.make_node("MatMul", ["h1", "Wo"], ["logits"])]
inits = [numpy_helper.from_array(a, n) for a, n in [(W, "W"), (R, "R"), (B, "B"), (Wo, "Wo"),
         (np.array([0], np.int64), "ax0"), (np.array([1, 1], np.int64), "two")]]
save(h.make_graph(nodes, "vad", [h.make_tensor_value_info("frame", T.FLOAT, [1, I]), h.make_tensor_value_info("state", T.FLOAT, [2, 1, H])],
     [h.make_tensor_value_info("logits", T.FLOAT, [1, 3]), h.make_tensor_value_info("new_state", T.FLOAT, [2, 1, H])], inits), "vad.onnx")
s = ort.InferenceSession(os.path.join(d, "vad.onnx"), providers=["CPUExecutionProvider"])
state = np.zeros((2, 1, H), np.float32)
steps = []
for k in range(6):
    frame = rng.standard_normal((1, I)).astype(np.float32)
    logits, state = s.run(None, {"frame": frame, "state": state})
    steps.append({"frame": frame.tolist(), "logits": logits.ravel().tolist(), "state": state.ravel().tolist()})
json.dump(steps, open(os.path.join(d, "vad.json"), "w"))
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `neorun predict BUNDLE` with BODY on stdin.
fn predict_body(d: &Path, bundle: &str, body: &str) -> std::process::Output {
    run("neorun", d, &["predict", bundle, "--trusted-key", "k.pub"], &[], Some(body.as_bytes()))
}

fn compile_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["compile", model, "--target", "host", "--key", "k.key", "-o", out][..], extra].concat()
}

fn manifest(d: &Path, bundle: &str) -> serde_json::Value {
    let o = run("neoc", d, &["inspect", bundle, "--json"], &[], None);
    let v: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    v.get("manifest").cloned().unwrap_or(v)
}

#[test]
fn exports_with_dynamic_axes_compile_with_and_without_pinned_shapes() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    // the repro: value_info `t: [batch,4]` beside `--input x=1,4`
    let out = ok(run("neoc", d, &compile_args("dyn.onnx", "pinned.neo", &["--input", "x=1,4"]), &[], None));
    assert!(out.contains("x f32[1,4]") && out.contains("y f32[1,4]"), "{out}");
    let out = ok(run("neoc", d, &compile_args("dyn.onnx", "dynamic.neo", &[]), &[], None));
    assert!(out.contains("x f32[batch,4]"), "{out}");
    let p = ok(predict_body(d, "pinned.neo", r#"{"inputs": [[1, -2, 3, -4]]}"#));
    assert_eq!(response_data(&p), vec![-1.0, 0.0, -3.0, 0.0]);
    let p = ok(predict_body(d, "dynamic.neo", r#"{"inputs": [[1, -2, 3, -4], [0, 5, -1, 2]]}"#));
    assert_eq!(response_data(&p), vec![-1.0, 0.0, -3.0, 0.0, 0.0, -5.0, 0.0, -2.0]);
}

#[test]
fn metadata_text_of_any_kind_is_carried_in_the_manifest() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    ok(run("neoc", d, &compile_args("apos.onnx", "apos.neo", &[]), &[], None));
    let want: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("apos.json")).unwrap()).unwrap();
    let m = manifest(d, "apos.neo");
    assert_eq!(m["model"]["metadata"], want, "{m}");
    let p = ok(predict_body(d, "apos.neo", r#"{"inputs": [[1, -2, 3, -4]]}"#));
    assert_eq!(response_data(&p), vec![1.0, 0.0, 3.0, 0.0]);
}

#[test]
fn if_on_a_pinned_input_folds_and_a_data_dependent_one_is_named() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    // pinned to 16000: the then branch (Relu, [1,4]); to 8000: the else branch (Concat, [1,8])
    let out = ok(run("neoc", d, &compile_args("if.onnx", "16k.neo", &["--input", "sr=16000:i64"]), &[], None));
    assert!(out.contains("y f32[1,4]") && out.contains("pinned:  sr=16000:i64"), "{out}");
    assert!(!out.contains("sr i64"), "a pinned input is no input of the bundle: {out}");
    let p = ok(predict_body(d, "16k.neo", r#"{"inputs": [[1, -2, 3, -4]]}"#));
    assert_eq!(response_data(&p), vec![1.0, 0.0, 3.0, 0.0]);
    let json_form = r#"{"sr": {"value": 8000, "dtype": "i64"}}"#;
    let out = ok(run("neoc", d, &compile_args("if.onnx", "8k.neo", &["--input", json_form]), &[], None));
    assert!(out.contains("y f32[1,8]"), "{out}");
    let p = ok(predict_body(d, "8k.neo", r#"{"inputs": [[1, -2, 3, -4]]}"#));
    assert_eq!(response_data(&p), vec![1.0, -2.0, 3.0, -4.0, 1.0, -2.0, 3.0, -4.0]);
    assert_eq!(manifest(d, "8k.neo")["model"]["pinned_inputs"], serde_json::json!({"sr": "8000:i64"}));
    // unpinned (or given as a scalar shape, short forms): refused by the pre-flight, naming the node
    for extra in [&[][..], &["--input", "sr=:i64"][..], &["--input", "sr=[]:i64"][..]] {
        let e = fails(run("neoc", d, &compile_args("if.onnx", "no.neo", extra), &[], None), 4);
        assert!(
            e.contains("node `rate_switch`: If") && e.contains("`sr`") && e.contains("--input sr=VALUE:i64"),
            "{e}"
        );
        assert!(!e.contains("Infering facts") && !e.contains("InferenceConcat"), "tract internals: {e}");
        assert!(!d.join("no.neo").exists());
    }
    // a condition on a shape: decided by the shape --input gives (> 2: Relu, else Neg)
    ok(run("neoc", d, &compile_args("ifshape.onnx", "long.neo", &["--input", "x=1,4"]), &[], None));
    assert_eq!(response_data(&ok(predict_body(d, "long.neo", "[[1, -2, 3, -4]]"))), vec![1.0, 0.0, 3.0, 0.0]);
    ok(run("neoc", d, &compile_args("ifshape.onnx", "short.neo", &["--input", "x=1,2"]), &[], None));
    assert_eq!(response_data(&ok(predict_body(d, "short.neo", "[[1, -2]]"))), vec![-1.0, 2.0]);
    let e = fails(run("neoc", d, &compile_args("ifshape.onnx", "no.neo", &[]), &[], None), 4);
    assert!(e.contains("node `long_input`: If") && e.contains("--input x=DIMS"), "{e}");
    // a value that does not fit the type
    let e = fails(run("neoc", d, &compile_args("if.onnx", "no.neo", &["--input", "sr=1.5:i64"]), &[], None), 1);
    assert!(e.contains("sr") && e.contains("whole number"), "{e}");
}

#[test]
fn one_coverage_report_lists_every_kind_of_refusal() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    let e = fails(run("neoc", d, &compile_args("multi.onnx", "m.neo", &[]), &[], None), 4);
    assert!(e.contains("4 unsupported operators"), "{e}");
    assert!(e.contains("node `fused`: com.microsoft::FusedMatMul (an onnxruntime contrib operator"), "{e}");
    assert!(e.contains("node `uniq`: Unique (no implementation"), "{e}");
    assert!(e.contains("node `pool`: MaxPool (with its Indices output") && e.contains("cannot carry"), "{e}");
    assert!(e.contains("node `branch`: If") && e.contains("`flag`"), "{e}");
}

#[test]
fn typing_errors_name_the_node_and_hint_at_input_only_when_one_lacks_a_fact() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    let e = fails(run("neoc", d, &compile_args("noshape.onnx", "n.neo", &[]), &[], None), 1);
    assert!(e.contains("input `a` has no complete shape or type") && e.contains("--input a="), "{e}");
    assert!(!e.contains("`b`"), "b has its shape: {e}");
    let e = fails(run("neoc", d, &compile_args("badmatmul.onnx", "n.neo", &[]), &[], None), 1);
    assert!(e.contains("node `proj` (MatMul)") || e.contains("`proj`"), "{e}");
    assert!(!e.contains("hint: input"), "every input has its fact, so no --input hint: {e}");
}

#[test]
fn the_same_model_from_two_folders_gives_the_same_bundle() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    let epoch = [("SOURCE_DATE_EPOCH", "1767225600")];
    ok(run("neoc", d, &compile_args("ra/x.onnx", "a.neo", &[]), &epoch, None));
    ok(run("neoc", d, &compile_args(d.join("rb/x.onnx").to_str().unwrap(), "b.neo", &[]), &epoch, None));
    assert_eq!(file_digest(&d.join("a.neo")), file_digest(&d.join("b.neo")));
    let m = manifest(d, "a.neo");
    assert_eq!(m["model"]["source"], "x.onnx");
    assert!(!m.to_string().contains(d.to_str().unwrap()), "a build path leaked: {m}");
}

/// The state fed back step by step: `neorun predict`, SageMaker JSON and
/// OIP v2 on `neorun serve`, each equal to onnxruntime.
#[test]
fn a_stateful_model_is_served_with_its_state_fed_back() {
    let dir = scratch();
    let d = dir.path();
    fixtures(d);
    let out = ok(run("neoc", d, &compile_args("vad.onnx", "vad.neo", &[]), &[], None));
    assert!(out.contains("frame f32[1,8], state f32[2,1,16]"), "{out}");
    let steps: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(d.join("vad.json")).unwrap()).unwrap();
    let outputs = |body: &str| -> (Vec<f64>, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let outs = v["outputs"].as_array().unwrap();
        let get = |n: &str| outs.iter().find(|o| o["name"] == n).unwrap().clone();
        let logits = get("logits")["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        (logits, get("new_state"))
    };
    let zero = serde_json::json!(vec![vec![vec![0.0; 16]]; 2]);
    // neorun predict
    let mut state = zero.clone();
    for s in &steps {
        let body = serde_json::json!({"frame": s["frame"], "state": state}).to_string();
        let (logits, st) = outputs(&ok(predict_body(d, "vad.neo", &body)));
        assert_close(&logits, &json_f64(&s["logits"]), 1e-4);
        assert_eq!(st["shape"], serde_json::json!([2, 1, 16]));
        assert_close(&json_f64(&st["data"]), &json_f64(&s["state"]), 1e-4);
        state = reshape_state(&st["data"]);
    }
    let server = serve_with(&bin("neorun"), d, &["vad.neo"]);
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build();
    // SageMaker JSON on /invocations
    let mut state = zero.clone();
    for s in &steps {
        let body = serde_json::json!({"frame": s["frame"], "state": state}).to_string();
        let r = agent
            .post(&format!("{}/invocations", server.base))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .map_err(|e| e.into_response().map(|r| r.into_string().unwrap()))
            .unwrap()
            .into_string()
            .unwrap();
        let (logits, st) = outputs(&r);
        assert_close(&logits, &json_f64(&s["logits"]), 1e-4);
        state = reshape_state(&st["data"]);
    }
    // OIP v2: full shapes, no row logic
    let mut flat: Vec<f64> = vec![0.0; 32];
    for s in &steps {
        let frame = json_f64(&s["frame"]);
        let body = serde_json::json!({"inputs": [
            {"name": "frame", "datatype": "FP32", "shape": [1, 8], "data": frame},
            {"name": "state", "datatype": "FP32", "shape": [2, 1, 16], "data": flat},
        ]})
        .to_string();
        let r = agent
            .post(&format!("{}/v2/models/vad/infer", server.base))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .map_err(|e| e.into_response().map(|r| r.into_string().unwrap()))
            .unwrap()
            .into_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        let outs = v["outputs"].as_array().unwrap();
        let get = |n: &str| json_f64(&outs.iter().find(|o| o["name"] == n).unwrap()["data"]);
        assert_close(&get("logits"), &json_f64(&s["logits"]), 1e-4);
        flat = get("new_state");
        assert_close(&flat, &json_f64(&s["state"]), 1e-4);
    }
    // a state of the wrong shape: a 400 naming the input and its shape
    let body = serde_json::json!({"frame": steps[0]["frame"], "state": vec![vec![0.0; 16]]}).to_string();
    match agent.post(&format!("{}/invocations", server.base)).set("Content-Type", "application/json").send_string(&body)
    {
        Err(ureq::Error::Status(400, r)) => {
            let t = r.into_string().unwrap();
            assert!(t.contains("`state`") && t.contains("[2,1,16]"), "{t}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

fn json_f64(v: &serde_json::Value) -> Vec<f64> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn reshape_state(flat: &serde_json::Value) -> serde_json::Value {
    let v = json_f64(flat);
    serde_json::json!([[v[..16].to_vec()], [v[16..].to_vec()]])
}

/// Random `metadata_props` text, random value and node names, and random
/// `value_info` annotations that agree with the real shapes (symbolic, as
/// exporters write, or the pinned sizes) never break a compile.
#[test]
fn random_metadata_and_value_info_never_break_a_compile() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import os, random, sys
import numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper
d, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
alphabet = "abc'\"\\\n\t\r ()[],;:=#{}$%-_.é日\u2028\x01\x7f"
def text():
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
for k in range(n):
    # value and node names as exporters write them: punctuation, spaces, non-ASCII
    odd = ["", "'", "日本", "a b", '"q"', "é", "/block.0/Conv_output_0", "::", "\\"]
    names = ["x"] + [f"v{i}{rnd.choice(odd)}" for i in range(4)]
    ops = [rnd.choice(["Relu", "Neg", "Abs", "Sigmoid"]) for _ in range(4)]
    nodes = [h.make_node(op, [names[i]], [names[i + 1]], name=f"n{i}{rnd.choice(odd)}") for i, op in enumerate(ops)]
    nodes.append(h.make_node("MatMul", [names[-1], "w"], ["y"]))
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    dim0 = lambda: rnd.choice(["batch", "N", f"DynamicDimension.{rnd.randint(0, 3)}", "unk__1", None])
    vi = [h.make_tensor_value_info(v, T.FLOAT, [dim0(), 4]) for v in names[1:] if rnd.random() < 0.7]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [dim0(), 3])], [w], value_info=vi)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    h.set_model_props(m, {text() or "k": text() for _ in range(rnd.randint(1, 4))})
    m.doc_string = text()
    onnx.save(m, os.path.join(d, f"p{k}.onnx"))
"#;
    let n = 8;
    let o =
        Command::new(venv_python()).args(["-c", script, d.to_str().unwrap(), "21", &n.to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for k in 0..n {
        let model = format!("p{k}.onnx");
        for extra in [&[][..], &["--input", "x=1,4"][..], &["--input", "x=3,4"][..]] {
            let o = run("neoc", d, &compile_args(&model, "p.neo", extra), &[], None);
            assert!(o.status.success(), "{model} {extra:?}: {}", stderr(&o));
        }
    }
}

/// An image-sized model: raw test vectors, one case kept (three verified),
/// `.npy` requests on `predict` and `serve`, tampered vector data refused.
#[test]
fn image_sized_models_keep_raw_test_vectors_and_take_npy_requests() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import sys, os, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
d = sys.argv[1]
rng = np.random.default_rng(3)
w = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
g = h.make_graph([h.make_node("Conv", ["image", "w"], ["c"], kernel_shape=[3, 3], strides=[4, 4]), h.make_node("Relu", ["c"], ["y"])], "g",
     [h.make_tensor_value_info("image", T.FLOAT, [1, 3, 320, 320])], [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 80, 80])], [nh.from_array(w, "w")])
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), os.path.join(d, "img.onnx"))
x = rng.standard_normal((1, 3, 320, 320)).astype(np.float32)
np.save(os.path.join(d, "x.npy"), x)
np.save(os.path.join(d, "x64.npy"), x.astype(np.float64))
np.save(os.path.join(d, "wrong.npy"), x[:, :, :300])
open(os.path.join(d, "x.json"), "w").write('{"inputs": ' + str(x.tolist()) + '}')
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = ok(run("neoc", d, &compile_args("img.onnx", "img.neo", &[]), &[], None));
    assert!(out.contains("on 3 seeded case(s)"), "{out}");
    let m = manifest(d, "img.neo");
    let files: Vec<(String, u64)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f["size"].as_u64().unwrap_or(0)))
        .collect();
    let size = |n: &str| files.iter().find(|f| f.0 == n).map(|f| f.1).unwrap_or_else(|| panic!("{n} in {files:?}"));
    // one case: the input (1.2 MB) and output (204 KB) as raw f32, an index of a few hundred bytes
    assert_eq!(size("test_vectors.bin"), (3 * 320 * 320 + 8 * 80 * 80) * 4, "{files:?}");
    assert!(size("test_vectors.json") < 2000, "{files:?}");
    assert!(std::fs::metadata(d.join("img.neo")).unwrap().len() < 2_000_000);
    let check = ok(run("neorun", d, &["check", "img.neo", "--trusted-key", "k.pub"], &[], None));
    assert!(check.contains("1 test vector") || check.contains("1 case"), "{check}");
    // .npy (f32, and f64 converted) equals JSON
    let data = |o: std::process::Output| response_data(&ok(o));
    let from_json = data(predict(d, "img.neo", "x.json"));
    assert_eq!(from_json.len(), 8 * 80 * 80);
    assert_eq!(data(predict(d, "img.neo", "x.npy")), from_json);
    assert_close(&data(predict(d, "img.neo", "x64.npy")), &from_json, 1e-5);
    let e = fails(predict(d, "img.neo", "wrong.npy"), 4);
    assert!(e.contains("shape [1, 3, 300, 320]") && e.contains("[1,3,320,320]"), "{e}");
    // the same on the server, as application/x-npy
    let server = serve_with(&bin("neorun"), d, &["img.neo"]);
    let body = std::fs::read(d.join("x.npy")).unwrap();
    let r = ureq::post(&format!("{}/invocations", server.base))
        .set("Content-Type", "application/x-npy")
        .send_bytes(&body)
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(response_data(&r), from_json);
    match ureq::post(&format!("{}/invocations", server.base))
        .set("Content-Type", "application/x-npy")
        .send_bytes(&body[..body.len() / 2])
    {
        Err(ureq::Error::Status(400, r)) => assert!(r.into_string().unwrap().contains("needs"), "truncated .npy"),
        other => panic!("expected a 400, got {other:?}"),
    }
    drop(server);
    // a bundle whose vector data was altered is refused before anything runs
    let tampered = d.join("tampered.neo");
    let mut bytes = std::fs::read(d.join("img.neo")).unwrap();
    let at = bytes.windows(16).position(|w| w == b"test_vectors.bin").unwrap() + 512 + 4096;
    bytes[at] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    let e = fails(run("neorun", d, &["check", "tampered.neo", "--trusted-key", "k.pub"], &[], None), 3);
    assert!(e.contains("digest") || e.contains("refused"), "{e}");
}

/// Weights kept outside the `.onnx` (`save_as_external_data`, what exporters
/// write for models past protobuf's 2 GB): the files the model names are
/// unpacked from a tarball (and only they: the notes beside them are not),
/// or copied from beside a model file given alone; a file the tarball lacks
/// or a location outside the model's directory is an error naming the tensor.
#[test]
fn external_data_is_fetched_from_the_tarball_or_beside_the_model() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import os, sys, tarfile
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper
d = sys.argv[1]
w = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
m = h.make_model(h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
     [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 3])],
     [numpy_helper.from_array(w, "w")]), opset_imports=[h.make_opsetid("", 17)], ir_version=8)
os.makedirs(d + "/ext/weights")
onnx.save(m, d + "/ext/model.onnx", save_as_external_data=True, location="weights/w.bin", size_threshold=0)
with open(d + "/ext/notes.bin", "wb") as f:
    f.write(os.urandom(1 << 16))
with tarfile.open(d + "/ext.tar.gz", "w:gz") as t:
    for n in ("model.onnx", "weights/w.bin", "notes.bin"):
        t.add(d + "/ext/" + n, arcname=n)
with tarfile.open(d + "/lacking.tar.gz", "w:gz") as t:
    t.add(d + "/ext/model.onnx", arcname="model.onnx")
m2 = onnx.load(d + "/ext/model.onnx", load_external_data=False)
m2.graph.initializer[0].external_data[0].value = "../w.bin"
onnx.save(m2, d + "/escape.onnx")
y = ort.InferenceSession(d + "/ext/model.onnx").run(None, {"x": np.array([[1, 2, 3, 4]], np.float32)})[0]
print(" ".join(str(v) for v in y.ravel()))
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Vec<f64> = String::from_utf8_lossy(&o.stdout).split_whitespace().map(|v| v.parse().unwrap()).collect();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmp_env = [("TMPDIR", tmp.to_str().unwrap())];
    ok(run("neoc", d, &compile_args("ext.tar.gz", "tar.neo", &[]), &tmp_env, None));
    ok(run("neoc", d, &compile_args("ext/model.onnx", "file.neo", &[]), &tmp_env, None));
    for b in ["tar.neo", "file.neo"] {
        let p = ok(predict_body(d, b, r#"{"inputs": [[1, 2, 3, 4]]}"#));
        assert_close(&response_data(&p), &want, 1e-5);
    }
    let e = fails(run("neoc", d, &compile_args("lacking.tar.gz", "x.neo", &[]), &tmp_env, None), 1);
    assert!(e.contains("tensor `w` keeps its data in `weights/w.bin`, which the tarball does not hold"), "{e}");
    assert!(e.contains("hint:"), "{e}");
    let e = fails(run("neoc", d, &compile_args("escape.onnx", "x.neo", &[]), &tmp_env, None), 1);
    assert!(e.contains("tensor `w`") && e.contains("\"../w.bin\" is not a relative path inside"), "{e}");
    assert!(!d.join("x.neo").exists());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "neoc left temporary files");
}

/// Node names that are words of NNEF's grammar (`true`, `graph`, or a name
/// starting `false…`): tract wrote them as is and read them back as the
/// word, so the model did not compile ("the runtime cannot load the
/// compiled model"). Found by the `nnef_round_trip` fuzz target.
#[test]
fn node_names_that_are_nnef_words_compile() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import sys, onnx
from onnx import helper as h, TensorProto as T
nodes = [h.make_node("Relu", ["x"], ["a"], name="graph"), h.make_node("Neg", ["a"], ["b"], name="true"),
         h.make_node("Abs", ["b"], ["y"], name="falsely")]
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), sys.argv[1] + "/words.onnx")
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(run("neoc", d, &compile_args("words.onnx", "words.neo", &[]), &[], None));
    let p = ok(predict_body(d, "words.neo", r#"{"inputs": [[1, -2, 3, -4]]}"#));
    assert_eq!(response_data(&p), vec![1.0, 0.0, 3.0, 0.0]);
}
