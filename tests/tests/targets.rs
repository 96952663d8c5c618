//! What a target changes in a bundle: precision, CPU features, threads,
//! accelerator; and the external-backend interface (AWS Neuron), driven with
//! a stand-in backend (tests/neuron/standin-neuronx-cc) because the Neuron SDK
//! is not installable here. Nothing here ran on GPU or Inferentia hardware.

use std::path::Path;
use std::process::Output;

use neoc_e2e::*;

fn registry() -> String {
    root().join("models/registry").display().to_string()
}

/// `neoc compile MODEL --target T … --json` in `d` with environment `envs`.
fn compile_json(d: &Path, model: &str, targets: &[&str], extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let reg = registry();
    let mut args = vec!["compile", model, "--registry", &reg, "--key", "k.key", "--json"];
    for t in targets {
        args.extend(["--target", t]);
    }
    args.extend_from_slice(extra);
    run("neoc", d, &args, envs, None)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn standin() -> String {
    root().join("tests/neuron/standin-neuronx-cc").display().to_string()
}

/// A PATH without any neuronx-cc.
fn no_neuron_path() -> String {
    "/usr/bin:/bin".into()
}

#[test]
fn precision_follows_the_target_and_fp16_is_refused_where_the_cpu_lacks_it() {
    let dir = scratch();
    let d = dir.path();
    let s = json(&ok(compile_json(
        d,
        "fraud-mlp:1",
        &[host_target(), "ml_m6g", "rasp4b"],
        &["-o", "out", "--explain"],
        &[],
    )));
    let b = s["bundles"].as_array().unwrap();
    let prec: Vec<&str> = b.iter().map(|x| x["target"]["precision"].as_str().unwrap()).collect();
    assert_eq!(prec, vec!["fp32", "fp16", "fp32"]);
    // the fp16 bundle's error against the fp32 reference is measured and recorded
    let v16 = &b[1]["verification"];
    assert_eq!(v16["precision"], "fp16");
    let err16 = v16["max_abs_error"].as_f64().unwrap();
    assert!(err16 > 1e-7 && err16 <= 1e-2, "fp16 error {err16}");
    assert_eq!(v16["atol"], 1e-2);
    assert!(v16["note"].as_str().unwrap().contains("emulated"), "{v16}");
    assert!(b[0]["verification"]["max_abs_error"].as_f64().unwrap() < 1e-6);
    assert!(b[1]["size"].as_u64().unwrap() < b[0]["size"].as_u64().unwrap(), "fp16 weights are half the size");
    // --explain says why, and what else the target changed
    assert!(b[1]["explain"]["precision"].as_str().unwrap().contains("its CPU has fp16 arithmetic"));
    assert!(b[2]["explain"]["threads"].as_str().unwrap().starts_with("4 "));
    assert!(b[1]["explain"]["cpu_features"].as_str().unwrap().contains("fp16"));
    assert_eq!(b[2]["target"]["threads"], 4);
    // --precision fp32 keeps fp32 on an fp16 target
    let s = json(&ok(compile_json(d, "fraud-mlp:1", &["ml_m6g"], &["-o", "m.neo", "--precision", "fp32"], &[])));
    assert_eq!(s["bundles"][0]["target"]["precision"], "fp32");
    // fp16 for targets without fp16 arithmetic, and for tree ensembles
    for t in [host_target(), "rasp4b", "x86_64-avx512"] {
        let e = fails(compile_json(d, "fraud-mlp:1", &[t], &["--precision", "fp16"], &[]), 1);
        assert!(e.contains(&format!("target {t} has no native fp16 arithmetic")) && e.contains("ml_m6g"), "{e}");
    }
    let e = fails(compile_json(d, "fraud-xgb:1", &["ml_m6g"], &["--precision", "fp16"], &[]), 1);
    assert!(e.contains("trees engine, which computes in fp32"), "{e}");
    // trees on an fp16 target: fp32, and the reason is given
    let s = json(&ok(compile_json(d, "fraud-xgb:1", &["ml_m6g"], &["-o", "x.neo", "--explain"], &[])));
    assert_eq!(s["bundles"][0]["target"]["precision"], "fp32");
    assert!(s["bundles"][0]["explain"]["precision"].as_str().unwrap().contains("trees engine"));
    let e = fails(compile_json(d, "fraud-mlp:1", &["ml_m6g"], &["--precision", "fp8"], &[]), 2);
    assert!(e.contains("not a precision"), "{e}");
}

#[test]
fn cuda_bundles_run_only_with_an_explicit_cpu_fallback() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let s = json(&ok(compile_json(d, "fraud-mlp:1", &["cuda-sm80"], &["-o", "g.neo", "--explain"], &[])));
    let t = &s["bundles"][0]["target"];
    assert_eq!(
        (t["accelerator"].as_str(), t["accelerator_arch"].as_str(), t["cpu_fallback"].as_bool()),
        (Some("cuda"), Some("sm_80"), Some(true))
    );
    assert!(s["bundles"][0]["explain"]["accelerator"].as_str().unwrap().contains("never run on GPU hardware"));
    let sample = root().join("models/fraud-mlp/sample.csv");
    let e = fails(predict(d, "g.neo", sample.to_str().unwrap()), 3);
    assert!(e.contains("to run on an NVIDIA GPU (CUDA) sm_80") && e.contains("--cpu-fallback"), "{e}");
    let o = run(
        "neorun",
        d,
        &["predict", "g.neo", "--trusted-key", "k.pub", "--cpu-fallback", "--input", sample.to_str().unwrap()],
        &[],
        None,
    );
    assert!(stderr(&o).contains("running its CPU model on this host"), "{}", stderr(&o));
    assert_close(&response_data(&ok(o)), &expected("fraud-mlp"), 1e-5);
}

/// CUDA bundles say which operators tract's CUDA runtime runs on the GPU
/// (found by neoc's dry run of tract-cuda's translation: no GPU here):
/// image-cnn's convolutions, activations, global pooling and dense layer
/// there, its two max pools on the CPU, with copies around them.
#[test]
fn cuda_bundles_record_where_each_operator_runs() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let o = compile_json(d, "image-cnn:1", &["cuda-sm80"], &["-o", "g.neo", "--explain"], &[]);
    let s = json(&ok(o));
    let b = &s["bundles"][0];
    let p = &b["gpu_placement"];
    assert_eq!(p["status"], "translated", "{p}");
    assert!(p["method"].as_str().unwrap().contains("without a GPU"), "{p}");
    let cpu: Vec<(&str, &str)> = p["cpu_ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["node"].as_str().unwrap(), o["op"].as_str().unwrap()))
        .collect();
    assert_eq!(cpu, [("pool0_max_pool_output", "MaxPool"), ("pool1_max_pool_output", "MaxPool")], "{p}");
    assert!(p["gpu_ops"].as_u64().unwrap() >= 10, "{p}");
    // input in, output out, and to the host and back around each pool
    assert!(p["transfers"].as_u64().unwrap() >= 6, "{p}");
    let acc = b["explain"]["accelerator"].as_str().unwrap();
    assert!(acc.contains("gpu placement") && acc.contains("on the CPU: pool0_max_pool_output (MaxPool)"), "{acc}");
    // the signed manifest carries it
    let o = run("neoc", d, &["inspect", "g.neo", "--key", "k.pub", "--json"], &[], None);
    let m = json(&ok(o));
    assert_eq!(m["manifest"]["gpu_placement"]["cpu_ops"].as_array().map(Vec::len), Some(2), "{m}");
    // CPU targets have none
    let s = json(&ok(compile_json(d, "image-cnn:1", &["x86_64"], &["-o", "c.neo"], &[])));
    assert!(s["bundles"][0]["gpu_placement"].is_null(), "{s}");
}

#[test]
fn neuron_targets_need_the_neuron_compiler_or_an_explicit_cpu_fallback() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let path = no_neuron_path();
    let bare: &[(&str, &str)] = &[("PATH", &path)];
    // no neuronx-cc: a clear error saying what to install
    let e = fails(compile_json(d, "fraud-mlp:1", &["ml_inf2"], &["-o", "n.neo"], bare), 1);
    assert!(e.contains("needs the AWS Neuron compiler (neuronx-cc), which is not installed"), "{e}");
    assert!(e.contains("pip install neuronx-cc") && e.contains("--neuron-fallback cpu"), "{e}");
    assert!(!d.join("n.neo").exists());
    // --neuron-fallback cpu: a CPU bundle that says so, run without any flag
    let s = json(&ok(compile_json(d, "fraud-mlp:1", &["ml_inf2"], &["-o", "n.neo", "--neuron-fallback", "cpu"], bare)));
    let b = &s["bundles"][0];
    assert_eq!(b["target"]["accelerator"], "none");
    let inspect = json(&ok(run("neoc", d, &["inspect", "n.neo", "--json"], &[], None)));
    let am = &inspect["manifest"]["accelerator_model"];
    assert!(
        am["status"].as_str().unwrap().contains("neuronx-cc is not installed (--neuron-fallback cpu); CPU bundle"),
        "{am}"
    );
    assert!(am["file"].is_null());
    let sample = root().join("models/fraud-mlp/sample.csv");
    assert_close(&response_data(&ok(predict(d, "n.neo", sample.to_str().unwrap()))), &expected("fraud-mlp"), 1e-5);

    // with a backend (the stand-in) the NEFF is in the bundle, signed like the rest
    let cc = standin();
    let with: &[(&str, &str)] = &[("PATH", &path), ("NEOC_NEURON_CC", &cc)];
    let s = json(&ok(compile_json(d, "fraud-mlp:1", &["ml_inf2"], &["-o", "inf.neo", "--explain"], with)));
    assert_eq!(s["bundles"][0]["target"]["accelerator"], "neuron");
    let inspect = json(&ok(run("neoc", d, &["inspect", "inf.neo", "--key", "k.pub", "--json"], &[], None)));
    let m = &inspect["manifest"];
    let am = &m["accelerator_model"];
    assert_eq!(am["status"], "compiled");
    assert_eq!(am["file"], "model.neff");
    assert_eq!(am["backend"]["version"], "NeuronX Compiler version 0.0.0+neoc-standin");
    assert_eq!(
        am["command"],
        serde_json::json!([
            "neuronx-cc",
            "compile",
            "model.onnx",
            "--framework",
            "ONNX",
            "--target",
            "inf2",
            "--output",
            "model.neff"
        ])
    );
    assert!(m["files"].as_array().unwrap().iter().any(|f| f["path"] == "model.neff"));
    // what the backend was given is the model as imported
    let bytes = std::fs::read(d.join("inf.neo")).unwrap();
    let at = bytes.windows(12).position(|w| w == b"NEFF-STANDIN").expect("the NEFF is in the bundle");
    let onnx_digest = file_digest(&root().join("models/fraud-mlp/model.onnx"));
    let neff = String::from_utf8_lossy(&bytes[at..at + 120]).to_string();
    assert!(neff.contains(onnx_digest.trim_start_matches("sha256:")), "{neff}");
    // no Neuron runtime on this host: neorun says so, and runs the CPU model
    // when told to (tests/tests/neuron.rs runs the NEFF on a stand-in libnrt)
    let e = fails(predict(d, "inf.neo", sample.to_str().unwrap()), 3);
    assert!(e.contains("the Neuron runtime library (libnrt) was not found") && e.contains("--cpu-fallback"), "{e}");
    let o = run(
        "neorun",
        d,
        &["predict", "inf.neo", "--trusted-key", "k.pub", "--cpu-fallback", "--input", sample.to_str().unwrap()],
        &[],
        None,
    );
    assert_close(&response_data(&ok(o)), &expected("fraud-mlp"), 1e-5);
    // a changed NEFF is refused like any other changed byte
    let mut tampered = bytes.clone();
    tampered[at] ^= 0x20;
    std::fs::write(d.join("bad.neo"), &tampered).unwrap();
    let e = fails(run("neorun", d, &["check", "bad.neo", "--trusted-key", "k.pub", "--cpu-fallback"], &[], None), 3);
    assert!(e.contains("model.neff"), "{e}");

    // a backend that fails, writes nothing, or hangs
    let e = fails(
        compile_json(
            d,
            "fraud-mlp:1",
            &["ml_inf2"],
            &["-o", "f.neo"],
            &[("PATH", &path), ("NEOC_NEURON_CC", &cc), ("STANDIN_FAIL", "1")],
        ),
        1,
    );
    assert!(
        e.contains("could not compile the model (exit status 70)") && e.contains("unsupported operator Foo"),
        "{e}"
    );
    let e = fails(
        compile_json(
            d,
            "fraud-mlp:1",
            &["ml_inf2"],
            &["-o", "f.neo"],
            &[("PATH", &path), ("NEOC_NEURON_CC", &cc), ("STANDIN_NO_OUTPUT", "1")],
        ),
        1,
    );
    assert!(e.contains("exited 0 but wrote no model.neff"), "{e}");
    let e = fails(
        compile_json(
            d,
            "fraud-mlp:1",
            &["ml_inf2"],
            &["-o", "f.neo"],
            &[("PATH", &path), ("NEOC_NEURON_CC", &cc), ("STANDIN_SLEEP", "30"), ("NEOC_BACKEND_TIMEOUT", "1")],
        ),
        1,
    );
    assert!(e.contains("did not finish in 1 s"), "{e}");
    assert!(!d.join("f.neo").exists());
    let e = fails(
        compile_json(
            d,
            "fraud-mlp:1",
            &["ml_inf2"],
            &["-o", "f.neo"],
            &[("PATH", &path), ("NEOC_NEURON_CC", "/nonexistent/neuronx-cc")],
        ),
        1,
    );
    assert!(e.contains("NEOC_NEURON_CC=/nonexistent/neuronx-cc does not name a file"), "{e}");
}

#[test]
fn targets_json_says_what_each_build_can_do() {
    let dir = scratch();
    let path = no_neuron_path();
    let doc = json(&ok(run("neoc", dir.path(), &["targets", "--json"], &[("PATH", &path)], None)));
    let find = |n: &str| doc["targets"].as_array().unwrap().iter().find(|t| t["name"] == n).cloned().unwrap();
    let m6g = find("ml_m6g");
    assert_eq!(m6g["default_precision"], "fp16");
    assert_eq!(m6g["precisions"], serde_json::json!(["fp32", "fp16"]));
    assert_eq!(m6g["triple"], "aarch64-unknown-linux-gnu");
    let inf2 = find("ml_inf2");
    assert_eq!(inf2["accelerator"]["kind"], "neuron");
    assert_eq!(inf2["neoc_compiles"], false);
    assert!(inf2["neoc_compile_note"].as_str().unwrap().contains("neuronx-cc is not installed"));
    assert_eq!(inf2["neorun_runs_here"], false);
    let g5 = find("ml_g5");
    assert_eq!(g5["accelerator"], serde_json::json!({"kind": "cuda", "sm": 86}));
    assert_eq!(g5["neorun_runs_here"], false);
    let host = find(host_target());
    assert_eq!(host["neorun_runs_here"], true);
    assert_eq!(host["default_precision"], "fp32");
}
