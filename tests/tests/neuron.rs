//! neorun's Neuron engine, driven against a stand-in Neuron runtime library
//! (tests/neuron/standin-libnrt.c, built here with `cc`) that implements the
//! part of libnrt's C API neorun calls, on the CPU. Bundles come from
//! `neoc compile --target ml_inf2` with the stand-in compiler
//! (tests/neuron/standin-neuronx-cc), whose "NEFF" names its tensors and what
//! it computes (relu or sum). No Inferentia hardware ran any of this.

use std::path::{Path, PathBuf};
use std::process::Command;

use neoc_e2e::*;

/// Builds the stand-in libnrt (`extra`: compiler flags) into `dir`.
fn standin_lib(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let so = dir.join(name);
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(root().join("tests/neuron/standin-libnrt.c"))
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed");
    so
}

/// A one-node Relu model, input `x` [N, 4], output `y`, as ONNX.
fn relu_model(d: &Path) {
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), sys.argv[1] + "/relu.onnx")
"#;
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `neoc compile MODEL --target ml_inf2` with the stand-in compiler, whose
/// NEFF has tensors `io` and computes `op` (None: a NEFF the runtime rejects).
fn compile_inf2(d: &Path, model: &str, out: &str, io: &str, op: Option<&str>) {
    let cc = root().join("tests/neuron/standin-neuronx-cc").display().to_string();
    let reg = root().join("models/registry").display().to_string();
    let mut envs: Vec<(&str, &str)> = vec![("NEOC_NEURON_CC", &cc), ("STANDIN_NEFF_IO", io)];
    if let Some(op) = op {
        envs.push(("STANDIN_NEFF_OP", op));
    }
    ok(run(
        "neoc",
        d,
        &["compile", model, "--registry", &reg, "--target", "ml_inf2", "--key", "k.key", "-o", out],
        &envs,
        None,
    ));
}

fn neorun(d: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> std::process::Output {
    run("neorun", d, args, envs, stdin)
}

#[test]
fn neuron_bundles_run_through_the_neuron_runtime_library() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    relu_model(d);
    let lib = standin_lib(d, "libnrt.so.1", &[]);
    let lib = lib.to_str().unwrap();
    compile_inf2(d, "relu.onnx", "relu.neo", "input x float32 1,4;output y float32 1,4", Some("relu"));
    let nrt: &[(&str, &str)] = &[("NEORUN_NRT_LIB", lib)];
    // `neoc targets` finds the runtime (without starting it)
    let doc: serde_json::Value = serde_json::from_str(&ok(run("neoc", d, &["targets", "--json"], nrt, None))).unwrap();
    let inf2 = doc["targets"].as_array().unwrap().iter().find(|t| t["name"] == "ml_inf2").unwrap();
    assert_eq!(inf2["neorun_runs_here"], true, "{inf2}");
    assert!(inf2["neorun_note"].as_str().unwrap().contains("Neuron runtime 2.99.0"), "{inf2}");

    // the health check runs the bundle's test vectors on the "NeuronCore"
    let c = ok(neorun(d, &["check", "relu.neo", "--trusted-key", "k.pub"], nrt, None));
    assert!(c.contains("running neuron (NEFF on inferentia2, libnrt 2.99.0)"), "{c}");
    assert!(c.contains("test vectors pass"), "{c}");

    // three rows on a NEFF compiled for one: one execution per row, in order
    let body = br#"{"instances": [[-1, 2, -3, 4], [5, -6, 7, -8], [0.5, -0.5, 0, 9]]}"#;
    let o = neorun(d, &["predict", "relu.neo", "--trusted-key", "k.pub", "--input", "-"], nrt, Some(body));
    let got = response_data(&ok(o));
    assert_eq!(got, vec![0.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 0.0, 0.5, 0.0, 0.0, 9.0]);

    // a NEFF that computes something else than the model is caught by the
    // health check against the bundle's reference outputs
    let io = "input features float32 1,30;output probabilities float32 1,2";
    compile_inf2(d, "fraud-mlp:1", "wrong.neo", io, Some("sum"));
    let e = fails(neorun(d, &["check", "wrong.neo", "--trusted-key", "k.pub"], nrt, None), 1);
    assert!(e.contains("health check failed") && e.contains("exceeds tolerance"), "{e}");
}

#[test]
fn a_missing_or_unusable_neuron_runtime_is_named_and_cpu_fallback_is_opt_in() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    relu_model(d);
    let good = standin_lib(d, "libnrt.so.1", &[]);
    let good = good.to_str().unwrap();
    let partial = standin_lib(d, "libnrt-partial.so", &["-DSTANDIN_OMIT_EXECUTE"]);
    compile_inf2(d, "relu.onnx", "relu.neo", "input x float32 1,4;output y float32 1,4", Some("relu"));
    let check = ["check", "relu.neo", "--trusted-key", "k.pub"];
    let refused = |envs: &[(&str, &str)]| fails(neorun(d, &check, envs, None), 3);

    // no library: what to install, and the opt-in CPU fallback
    let e = refused(&[("NEORUN_NRT_LIB", "/nonexistent/libnrt.so.1")]);
    assert!(e.contains("NEORUN_NRT_LIB=/nonexistent/libnrt.so.1 names no file"), "{e}");
    assert!(e.contains("aws-neuronx-runtime-lib") && e.contains("--cpu-fallback"), "{e}");
    let o = neorun(d, &[&check[..], &["--cpu-fallback"]].concat(), &[("NEORUN_NRT_LIB", "/nonexistent/x.so")], None);
    assert!(stderr(&o).contains("running its CPU model on this host (--cpu-fallback)"), "{}", stderr(&o));
    assert!(ok(o).contains("running tract"));
    // a library that lacks a function neorun calls
    let e = refused(&[("NEORUN_NRT_LIB", partial.to_str().unwrap())]);
    assert!(e.contains("does not export nrt_execute"), "{e}");
    // a runtime of another API generation
    let e = refused(&[("NEORUN_NRT_LIB", good), ("STANDIN_NRT_MAJOR", "3")]);
    assert!(e.contains("is Neuron runtime 3.99.0; this neorun speaks runtime API 2.x"), "{e}");
    // no device: nrt_init fails
    let e = refused(&[("NEORUN_NRT_LIB", good), ("STANDIN_NRT_INIT_FAIL", "1")]);
    assert!(e.contains("nrt_init failed: NRT_RESOURCE (4)") && e.contains("/dev/neuron0"), "{e}");

    // a NEFF the runtime rejects, and one whose tensors are not the model's
    compile_inf2(d, "relu.onnx", "noop.neo", "input x float32 1,4;output y float32 1,4", None);
    let e = fails(neorun(d, &["check", "noop.neo", "--trusted-key", "k.pub"], &[("NEORUN_NRT_LIB", good)], None), 3);
    assert!(e.contains("nrt_load (the NEFF) failed: NRT_INVALID (2)"), "{e}");
    compile_inf2(d, "relu.onnx", "other.neo", "input z float32 1,4;output y float32 1,4", Some("relu"));
    let e = fails(neorun(d, &["check", "other.neo", "--trusted-key", "k.pub"], &[("NEORUN_NRT_LIB", good)], None), 3);
    assert!(e.contains("the NEFF has no input `x` (its inputs: z)"), "{e}");
    compile_inf2(
        d,
        "relu.onnx",
        "shape.neo",
        "input x float32 1,4;output y float32 1,4;output w float32 1,4",
        Some("relu"),
    );
    let e = fails(neorun(d, &["check", "shape.neo", "--trusted-key", "k.pub"], &[("NEORUN_NRT_LIB", good)], None), 3);
    assert!(e.contains("the NEFF has 2 outputs (y, w), the bundle's manifest 1 (y)"), "{e}");

    // the device fails while running: the request fails and says how
    let body = br#"{"instances": [[-1, 2, -3, 4]]}"#;
    let envs: &[(&str, &str)] = &[("NEORUN_NRT_LIB", good), ("STANDIN_NRT_EXEC_FAIL", "1")];
    let o = neorun(d, &["predict", "relu.neo", "--trusted-key", "k.pub", "--input", "-"], envs, Some(body));
    let e = fails(o, 1);
    assert!(e.contains("nrt_execute failed: NRT_HW_ERROR (6)"), "{e}");
}
