//! ONNX LSTMs compile to neoc's whole-sequence operator (`neoc_lstm`,
//! runtime/src/kernels/lstm.rs) and answer as onnxruntime does, including
//! what tract's own lowering gets wrong or refuses: `direction = reverse`,
//! `sequence_lens`, bidirectional with `layout = 1`, peepholes and `clip`.
//! The models and their expected values: `neoc_e2e::lstm_fixtures`. tests/arm.rs
//! runs the same bundles on aarch64 and armv7 under qemu.

use std::process::Command;

use neoc_e2e::*;

#[test]
fn onnx_lstms_compile_to_neoc_lstm_and_answer_as_onnxruntime() {
    let dir = scratch();
    let d = dir.path();
    lstm_fixtures(d);
    for name in ["reverse", "bidir_lens", "peep_clip"] {
        let bundle = format!("{name}.neo");
        let tarball = format!("{name}.tar.gz");
        let out = ok(run(
            "neoc",
            d,
            &["compile", &tarball, "--target", "host", "--engine", "tract", "--key", "k.key", "-o", &bundle, "--json"],
            &[],
            None,
        ));
        let s: serde_json::Value = serde_json::from_str(&out).unwrap();
        let registries = s["engine"]["registries"].as_array().cloned().unwrap_or_default();
        assert!(registries.iter().any(|r| r == "neoc"), "{name}: {s}");
        // the bundle's NNEF graph calls neoc_lstm, not tract's scan
        let listing = Command::new("tar").current_dir(d).args(["xOf", &bundle, "model.nnef.tar"]).output().unwrap();
        assert!(listing.status.success(), "{name}: {}", String::from_utf8_lossy(&listing.stderr));
        let graph = Command::new("tar").arg("xOf").arg("-").arg("graph.nnef").stdin_bytes(&listing.stdout);
        assert!(graph.contains("neoc_lstm(") && !graph.contains("tract_core_scan"), "{name}: {graph}");
        let p = ok(predict(d, &bundle, &format!("{name}.json")));
        let got: serde_json::Value = serde_json::from_str(&p).unwrap();
        let want: Vec<Vec<f64>> =
            serde_json::from_slice(&std::fs::read(d.join(format!("{name}.want.json"))).unwrap()).unwrap();
        for (k, w) in want.iter().enumerate() {
            let g: Vec<f64> =
                got["outputs"][k]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_close(&g, w, 1e-4);
        }
    }
    // tract's own lowering runs a reverse LSTM forwards: the shipped
    // expected outputs catch it (exit 3), where neoc_lstm above matched
    let e = fails(
        run(
            "neoc",
            d,
            &["compile", "reverse.tar.gz", "--target", "host", "--engine", "tract", "--key", "k.key", "-o", "scan.neo"],
            &[("NEOC_LSTM", "tract")],
            None,
        ),
        3,
    );
    assert!(e.contains("tolerance"), "{e}");
    assert!(!d.join("scan.neo").exists());
}

/// `tar xOf - NAME` of bytes, as text.
trait StdinBytes {
    fn stdin_bytes(&mut self, bytes: &[u8]) -> String;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = self.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// An LSTM attribute ONNX does not allow is refused by name, with nothing
/// written: a direction other than forward/reverse/bidirectional, a clip
/// threshold that is not positive.
#[test]
fn bad_lstm_attributes_are_refused_by_name() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import os, sys
import numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
d = sys.argv[1]
for name, attrs in [("sideways", {"direction": "sideways"}), ("clip", {"clip": -1.0})]:
    inits = [nh.from_array(np.zeros((1, 16, 3), np.float32), "W"), nh.from_array(np.zeros((1, 16, 4), np.float32), "R")]
    node = h.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=4, **attrs)
    g = h.make_graph([node], name, [h.make_tensor_value_info("x", T.FLOAT, [5, 1, 3])],
                     [h.make_tensor_value_info("Y", T.FLOAT, None)], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 14)], ir_version=8), os.path.join(d, name + ".onnx"))
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (name, want) in
        [("sideways", "LSTM direction \"sideways\""), ("clip", "LSTM clip -1: a threshold must be positive")]
    {
        let model = format!("{name}.onnx");
        let o = run("neoc", d, &["compile", &model, "--target", "host", "--key", "k.key", "-o", "x.neo"], &[], None);
        assert!(!o.status.success(), "{name}");
        let e = stderr(&o);
        assert!(e.contains(want), "{name}: {e}");
        assert!(!d.join("x.neo").exists());
    }
}
