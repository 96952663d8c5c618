//! The onnxruntime engine, for real: the `onnxruntime` pip package in the
//! test venv provides `libonnxruntime`; `neoc` verifies and times its bundles
//! against tract's, checks every ONNX bundle against it, compiles models only
//! it can run; `neorun` (the workspace build, which has the engine) runs and
//! serves them, and outputs match onnxruntime in Python. The bad inputs: no
//! library, a library that is not onnxruntime, one too old for neorun, one
//! older than the bundle was verified with, a model onnxruntime cannot load,
//! a request onnxruntime refuses. Strings, and the CUDA targets' bundles up
//! to the GPU.
//!
//! (Over 600 lines on purpose: every test here shares the venv's library,
//! the generated models of tests/onnxruntime/make_models.py and the helpers
//! that compile against them and read answers; split, each file would
//! carry its own copy.)

use std::path::{Path, PathBuf};

use neoc_e2e::*;

/// `onnxruntime/capi` of the test venv (pip-installed from models/requirements.txt).
fn ort_capi() -> PathBuf {
    let capi = venv_site_packages().join("onnxruntime/capi");
    assert!(capi.is_dir(), "{} is missing: pip install -r models/requirements.txt", capi.display());
    capi
}

fn ort_env() -> (&'static str, String) {
    ("ORT_DYLIB_PATH", ort_capi().to_str().unwrap().to_string())
}

/// The version of onnxruntime in the venv, as Python reports it.
fn python_ort_version() -> String {
    let out = std::process::Command::new(venv_python())
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn manifest(dir: &Path, bundle: &str) -> serde_json::Value {
    manifest_of(dir, bundle)
}

/// The test models (tests/onnxruntime/make_models.py) in `dir/m`.
fn make_models(dir: &Path) -> PathBuf {
    let script = root().join("tests/onnxruntime/make_models.py");
    let st = std::process::Command::new(venv_python()).arg(&script).arg(dir.join("m")).status().unwrap();
    assert!(st.success(), "make_models.py failed");
    dir.join("m")
}

/// onnxruntime in Python on `inputs` ({name: nested list}): the outputs' data.
fn python_reference(dir: &Path, tarball: &Path, inputs: &serde_json::Value) -> Vec<Vec<f64>> {
    let f = dir.join("ref-inputs.json");
    std::fs::write(&f, inputs.to_string()).unwrap();
    let out = std::process::Command::new(venv_python())
        .arg(root().join("tests/onnxruntime/make_models.py"))
        .arg("reference")
        .arg(tarball)
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect()
}

fn compile_in(dir: &Path, model: &Path, out: &str, extra: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut args = vec!["compile", model.to_str().unwrap(), "--key", "k.key", "-o", out];
    if !extra.contains(&"--target") {
        args.extend(["--target", "x86_64"]);
    }
    args.extend_from_slice(extra);
    run("neoc", dir, &args, envs, None)
}

#[test]
fn onnxruntime_bundle_matches_onnxruntime_in_python_and_carries_tract_as_fallback() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let cnn = root().join("models/image-cnn/model.tar.gz");
    ok(compile_in(d, &cnn, "cnn.neo", &["--engine", "onnxruntime"], &[(k, &v)]));
    let m = manifest(d, "cnn.neo");
    assert_eq!(m["engine"]["name"], "onnxruntime", "{m:#}");
    assert_eq!(m["engine"]["model_file"], "model.onnx");
    assert_eq!(m["engine"]["version"], python_ort_version(), "{m:#}");
    assert_eq!(m["engine"]["options"]["graph_optimization_level"], "all", "{m:#}");
    assert_eq!(m["engine"]["options"]["inter_op_threads"], "1", "{m:#}");
    assert_eq!(m["engine"]["options"]["memory_arena"], "true", "{m:#}");
    assert_eq!(m["fallback_engine"]["name"], "tract");
    assert_eq!(m["engine_selection"]["method"], "requested");
    let files: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(files.contains(&"model.onnx") && files.contains(&"model.nnef.tar"), "{files:?}");
    // the stock minisign accepts the signature that covers both models' digests
    assert_minisign_accepts(d, "cnn.neo");

    let sample = root().join("models/image-cnn/sample.json");
    let args = ["predict", "cnn.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()];
    // expected.json was computed by onnxruntime in Python (models/generate.py)
    let out = ok(run("neorun", d, &args, &[(k, &v)], None));
    assert_close(&response_data(&out), &expected("image-cnn"), 1e-6);
    // the device-side health check and bench run through onnxruntime
    let out = ok(run(
        "neorun",
        d,
        &["bench", "cnn.neo", "--trusted-key", "k.pub", "--iterations", "5", "--json"],
        &[(k, &v)],
        None,
    ));
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(b["running"].as_str().unwrap().starts_with("onnxruntime"), "{b}");

    // no library on the device: refused naming what was tried, what to
    // install and the fallback; with --engine-fallback, tract answers
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(run("neorun", d, &args, &[(k, empty.to_str().unwrap())], None), 3);
    assert!(e.contains("holds no libonnxruntime.so") && e.contains("pip install onnxruntime"), "{e}");
    assert!(e.contains("--engine-fallback"), "{e}");
    let mut fb = args.to_vec();
    fb.push("--engine-fallback");
    let o = run("neorun", d, &fb, &[(k, empty.to_str().unwrap())], None);
    let out = ok(o.clone());
    assert!(stderr(&o).contains("fallback for onnxruntime"), "{}", stderr(&o));
    assert_close(&response_data(&out), &expected("image-cnn"), 1e-4);
}

#[test]
fn auto_times_onnxruntime_against_tract_and_every_onnx_bundle_is_checked_against_it() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let cnn = root().join("models/image-cnn/model.tar.gz");
    ok(compile_in(d, &cnn, "auto.neo", &[], &[(k, &v)]));
    let m = manifest(d, "auto.neo");
    let sel = &m["engine_selection"];
    let cands = sel["candidates"].as_array().unwrap();
    let names: Vec<String> = cands
        .iter()
        .map(|c| format!("{} {}", c["engine"].as_str().unwrap(), c["precision"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["tract fp32", "onnxruntime fp32"], "{sel:#}");
    // this host runs x86_64: both were verified and timed; tract (the
    // target's first engine) stays unless onnxruntime beats it beyond the margin
    assert_eq!(sel["method"], "measured", "{sel:#}");
    let t: Vec<f64> = cands.iter().map(|c| c["median_us"].as_f64().unwrap()).collect();
    let chosen = cands.iter().position(|c| c["status"] == "chosen").unwrap();
    if chosen == 1 {
        assert!(t[1] < t[0] * 0.95 /* pipeline::ENGINE_MARGIN */, "{sel:#}");
        assert_eq!(m["fallback_engine"]["name"], "tract");
    }
    assert_eq!(m["engine"]["name"], cands[chosen]["engine"]);

    // a tract bundle: checked against onnxruntime on the same inputs
    let out = ok(compile_in(d, &cnn, "tract.neo", &["--engine", "tract"], &[(k, &v)]));
    let ver = manifest(d, "tract.neo")["verification"].clone();
    let ind = &ver["independent_engine"];
    assert_eq!(ind["source"], format!("onnxruntime {}", python_ort_version()), "{ver:#}");
    assert_eq!(ind["cases"], ver["cases"], "{ver:#}");
    assert!(ind["max_abs_error"].as_f64().unwrap() <= 1e-4, "{ver:#}");
    assert!(out.contains("vs onnxruntime"), "{out}");
    // an fp16 bundle for an ARM target too (whatever engine, whatever target)
    ok(compile_in(d, &cnn, "m6g.neo", &["--target", "ml_m6g"], &[(k, &v)]));
    let ver = manifest(d, "m6g.neo")["verification"].clone();
    assert!(ver["independent_engine"]["source"].as_str().unwrap().starts_with("onnxruntime"), "{ver:#}");

    // without the library: tract's bundle, and the manifest and summary say
    // that only neoc's own import was the reference
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = ok(compile_in(d, &cnn, "alone.neo", &[], &[(k, empty.to_str().unwrap())]));
    let m = manifest(d, "alone.neo");
    assert_eq!(m["engine"]["name"], "tract");
    assert!(m["verification"]["independent_engine"].is_null(), "{m:#}");
    let note = m["verification"]["note"].as_str().unwrap();
    assert!(note.contains("only neoc's own import was the reference"), "{note}");
    assert!(out.contains("only neoc's own import was the reference"), "{out}");
    assert!(out.contains("onnxruntime fp32 unavailable"), "{out}");
}

#[test]
fn lstm_and_data_dependent_if_compile_and_serve_equal_to_onnxruntime_in_python() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let models = make_models(d);

    // the LSTM head: tract imports it too; onnxruntime's bundle is asked for
    ok(compile_in(d, &models.join("lstm.tar.gz"), "lstm.neo", &["--engine", "onnxruntime"], &[(k, &v)]));
    assert_eq!(manifest(d, "lstm.neo")["engine"]["name"], "onnxruntime");
    let x: Vec<Vec<Vec<f64>>> =
        (0..16).map(|s| vec![(0..8).map(|f| ((s * 8 + f) as f64 * 0.37).sin()).collect()]).collect();
    let want = python_reference(d, &models.join("lstm.tar.gz"), &serde_json::json!({"x": x}));
    std::fs::write(d.join("lstm.json"), serde_json::json!({"x": x}).to_string()).unwrap();
    let out =
        ok(run("neorun", d, &["predict", "lstm.neo", "--trusted-key", "k.pub", "-i", "lstm.json"], &[(k, &v)], None));
    assert_close(&response_data(&out), &want[0], 1e-6);

    // data-dependent If: tract cannot import it; auto makes an onnxruntime
    // bundle, says so, and carries no tract model
    let o = compile_in(d, &models.join("data-if.tar.gz"), "if.neo", &[], &[(k, &v)]);
    let out = ok(o.clone()) + &stderr(&o);
    assert!(out.contains("only onnxruntime can run this model") && out.contains("--features onnxruntime"), "{out}");
    let m = manifest(d, "if.neo");
    assert_eq!(m["engine"]["name"], "onnxruntime", "{m:#}");
    assert!(m["fallback_engine"].is_null(), "{m:#}");
    let tract = &m["engine_selection"]["candidates"][0];
    assert!(tract["status"].as_str().unwrap().starts_with("unavailable: tract cannot import the model"), "{tract}");
    assert!(m["verification"]["reference"].as_str().unwrap().contains("not the arithmetic against a second engine"));

    // served: each request takes its own branch, as in Python
    let server = serve_with_env(&bin("neorun"), d, &["if.neo"], &[(k, v.clone())]);
    for row in [[1.0, 2.0, 3.0, -1.0], [-1.0, -2.0, 3.0, -1.0]] {
        let want = python_reference(d, &models.join("data-if.tar.gz"), &serde_json::json!({"x": [row]}));
        let body = format!("{},{},{},{}", row[0], row[1], row[2], row[3]);
        let r = ureq::post(&format!("{}/invocations", server.base))
            .set("Content-Type", "text/csv")
            .set("Accept", "application/json")
            .send_string(&body)
            .unwrap();
        assert_close(&response_data(&r.into_string().unwrap()), &want[0], 1e-6);
    }
    drop(server);

    // tract imports this one and cannot lower it (its output is a symbolic
    // dimension): onnxruntime goes on alone, and says why
    let o = compile_in(d, &models.join("shape-of.tar.gz"), "shape.neo", &[], &[(k, &v)]);
    let out = ok(o.clone()) + &stderr(&o);
    assert!(out.contains("only onnxruntime can run this model") && out.contains("TDim"), "{out}");
    let m = manifest(d, "shape.neo");
    assert_eq!(m["engine"]["name"], "onnxruntime", "{m:#}");
    assert!(m["fallback_engine"].is_null(), "{m:#}");
    let tract = &m["engine_selection"]["candidates"][0];
    assert!(tract["status"].as_str().unwrap().starts_with("unavailable: tract:"), "{tract}");
    std::fs::write(d.join("x.json"), "[[1,2,3],[4,5,6]]").unwrap();
    let out =
        ok(run("neorun", d, &["predict", "shape.neo", "--trusted-key", "k.pub", "-i", "x.json"], &[(k, &v)], None));
    assert_eq!(response_data(&out), [2.0, 3.0]);

    // a model whose test set feeds NaN takes NaN: the manifest marks the
    // input, and neorun lets NaN through there (a neural model's other inputs
    // refuse it, as the image CNN's does)
    ok(compile_in(d, &models.join("nan-mask.tar.gz"), "nan.neo", &[], &[(k, &v)]));
    assert_eq!(manifest(d, "nan.neo")["inputs"][0]["non_finite"], true);
    std::fs::write(d.join("nan.json"), r#"[[0.5, "NaN", 3, "NaN"]]"#).unwrap();
    let out =
        ok(run("neorun", d, &["predict", "nan.neo", "--trusted-key", "k.pub", "-i", "nan.json"], &[(k, &v)], None));
    assert_eq!(response_data(&out), [0.0, 1.0, 0.0, 1.0]);
    let cnn = root().join("models/image-cnn/model.tar.gz");
    ok(compile_in(d, &cnn, "cnn.neo", &["--engine", "onnxruntime"], &[(k, &v)]));
    assert!(manifest(d, "cnn.neo")["inputs"][0].get("non_finite").is_none());

    // a forest the trees engine refuses (a set-membership split) runs on onnxruntime
    let o = compile_in(d, &models.join("member-tree.tar.gz"), "tree.neo", &[], &[(k, &v)]);
    let out = ok(o.clone()) + &stderr(&o);
    assert!(out.contains("only onnxruntime can run this model (the trees engine:"), "{out}");
    assert_eq!(manifest(d, "tree.neo")["engine"]["name"], "onnxruntime");
    std::fs::write(d.join("rows.csv"), "3,9\n2,9\n").unwrap();
    let out =
        ok(run("neorun", d, &["predict", "tree.neo", "--trusted-key", "k.pub", "-i", "rows.csv"], &[(k, &v)], None));
    assert_eq!(response_data(&out), [-1.0, 1.0]);

    // without the library the If model cannot compile, and the error says
    // what would run it
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(compile_in(d, &models.join("data-if.tar.gz"), "x.neo", &[], &[(k, empty.to_str().unwrap())]), 4);
    assert!(e.contains("onnxruntime might run it") && e.contains("--engine onnxruntime"), "{e}");
    assert!(e.contains("holds no libonnxruntime.so") && e.contains("node `y`: If"), "{e}");
    assert!(!d.join("x.neo").exists());
}

#[test]
fn bad_libraries_sessions_and_requests_get_clear_errors() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let models = make_models(d);
    let cnn = root().join("models/image-cnn/model.tar.gz");
    ok(compile_in(d, &cnn, "cnn.neo", &["--engine", "onnxruntime"], &[(k, &v)]));
    let sample = root().join("models/image-cnn/sample.json");
    let predict = |lib: &Path| {
        run(
            "neorun",
            d,
            &["predict", "cnn.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()],
            &[(k, lib.to_str().unwrap())],
            None,
        )
    };
    // stand-in libraries built here: one that is not onnxruntime, one too
    // old for neorun, one new enough but older than the bundle was verified with
    let fake = |name: &str, version: Option<&str>| -> PathBuf {
        let src = d.join(format!("{name}.c"));
        let c = match version {
            Some(v) => format!(
                "typedef struct {{ const void* (*get_api)(unsigned); const char* (*version)(void); }} base_t;\n\
                 static const void* get_api(unsigned v) {{ return 0; }}\n\
                 static const char* version(void) {{ return \"{v}\"; }}\n\
                 static base_t base = {{ get_api, version }};\n\
                 const base_t* OrtGetApiBase(void) {{ return &base; }}\n"
            ),
            None => "int not_onnxruntime(void) { return 0; }\n".into(),
        };
        std::fs::write(&src, c).unwrap();
        let so = d.join(format!("{name}/libonnxruntime.so.1"));
        std::fs::create_dir_all(so.parent().unwrap()).unwrap();
        let st = std::process::Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).status().unwrap();
        assert!(st.success(), "cc failed");
        so
    };
    let e = fails(predict(&fake("other", None)), 3);
    assert!(e.contains("does not export OrtGetApiBase") && e.contains("ORT_DYLIB_PATH"), "{e}");
    let e = fails(predict(&fake("old", Some("1.16.3"))), 3);
    assert!(e.contains("is onnxruntime 1.16.3") && e.contains("1.17 or newer"), "{e}");
    let e = fails(predict(&fake("older", Some("1.20.0"))), 3);
    assert!(
        e.contains(&format!("verified with onnxruntime {}", python_ort_version())) && e.contains("1.20.0, older"),
        "{e}"
    );
    // a library folder named directly: the folder is searched
    let e = fails(predict(d), 3);
    assert!(e.contains(&format!("ORT_DYLIB_PATH={} holds no libonnxruntime.so", d.display())), "{e}");

    // onnxruntime asked for where a target cannot have it
    let e = fails(compile_in(d, &cnn, "x.neo", &["--engine", "onnxruntime", "--target", "armv7"], &[(k, &v)]), 1);
    assert!(e.contains("x86-64 and aarch64") && e.contains("armv7 is armv7"), "{e}");
    // (--neuron-fallback: past the check for neuronx-cc, which is not here)
    let args = ["--engine", "onnxruntime", "--target", "ml_inf2", "--neuron-fallback", "cpu"];
    let e = fails(compile_in(d, &cnn, "x.neo", &args, &[(k, &v)]), 1);
    assert!(e.contains("neuron accelerator") && e.contains("the CPU and CUDA GPUs"), "{e}");
    let e = fails(
        compile_in(
            d,
            &cnn,
            "x.neo",
            &["--engine", "onnxruntime", "--target", "ml_m6g", "--precision", "fp16"],
            &[(k, &v)],
        ),
        1,
    );
    assert!(e.contains("onnxruntime engine computes in fp32"), "{e}");
    let xgb = root().join("models/fraud-xgb/xgboost-model.json");
    let e = fails(compile_in(d, &xgb, "x.neo", &["--engine", "onnxruntime"], &[(k, &v)]), 1);
    assert!(e.contains("tree ensembles run on the trees engine"), "{e}");
    assert!(!d.join("x.neo").exists());

    // a model onnxruntime cannot load (IR 14 for a 1.31 runtime): its message, no crash
    let e = fails(compile_in(d, &models.join("ir14.tar.gz"), "ir.neo", &["--engine", "onnxruntime"], &[(k, &v)]), 1);
    assert!(e.contains("onnxruntime cannot create a session") && e.contains("IR version"), "{e}");
    assert!(!d.join("ir.neo").exists());

    // a request onnxruntime refuses: a fixed-batch model declared with a free
    // batch (its shipped test set has one row) gets a bad request, not a 500
    ok(compile_in(
        d,
        &models.join("fixed-batch.tar.gz"),
        "fb.neo",
        &["--engine", "onnxruntime", "--input", "x=N,4"],
        &[(k, &v)],
    ));
    std::fs::write(d.join("two.json"), "[[1,2,3,4],[5,6,7,8]]").unwrap();
    let e = fails(
        run("neorun", d, &["predict", "fb.neo", "--trusted-key", "k.pub", "-i", "two.json"], &[(k, &v)], None),
        4,
    );
    assert!(e.contains("onnxruntime refused the request") && e.contains("invalid dimensions"), "{e}");
    let server = serve_with_env(&bin("neorun"), d, &["fb.neo"], &[(k, v.clone())]);
    let r = ureq::post(&format!("{}/invocations", server.base))
        .set("Content-Type", "text/csv")
        .send_string("1,2,3,4\n5,6,7,8\n");
    match r {
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap();
            assert!((400..500).contains(&code) && body.contains("invalid dimensions"), "{code} {body}");
        }
        other => panic!("expected a 4xx, got {other:?}"),
    }
    // one row is fine
    let r = ureq::post(&format!("{}/invocations", server.base))
        .set("Content-Type", "text/csv")
        .set("Accept", "application/json")
        .send_string("1,2,3,4\n")
        .unwrap();
    assert_close(&response_data(&r.into_string().unwrap()), &[3.0, 6.0, 9.0, 12.0], 1e-6);
}

/// The `{name: data}` of every output of a JSON answer (neorun's
/// `{"outputs": [{name, data}]}` or the Open Inference Protocol's).
fn outputs_by_name(json: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    doc["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_string(), o["data"].clone()))
        .collect()
}

#[test]
fn string_tensors_compile_verify_and_serve_through_every_codec() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let models = make_models(d);
    let tarball = models.join("string-features.tar.gz");

    // tract cannot import string LabelEncoders; auto makes an onnxruntime
    // bundle whose test vectors carry the shipped strings
    let o = compile_in(d, &tarball, "s.neo", &[], &[(k, &v)]);
    let out = ok(o.clone()) + &stderr(&o);
    assert!(out.contains("only onnxruntime can run this model"), "{out}");
    let m = manifest(d, "s.neo");
    assert_eq!(m["engine"]["name"], "onnxruntime", "{m:#}");
    let dtypes = |side: &str| m[side].as_array().unwrap().iter().map(|t| t["dtype"].clone()).collect::<Vec<_>>();
    assert_eq!(dtypes("inputs"), ["string", "f32"], "{m:#}");
    assert_eq!(dtypes("outputs"), ["f32", "string"], "{m:#}");
    let check = ok(run("neorun", d, &["check", "s.neo", "--trusted-key", "k.pub"], &[(k, &v)], None));
    assert!(check.contains("running onnxruntime (fp32): 1 test vectors pass (max abs error 0.00e0)"), "{check}");

    // predict: strings with a comma, a non-ASCII letter and an unknown city,
    // equal to onnxruntime in Python
    let cities = ["Paris", "São Paulo", "Berlin", "New York, NY"];
    let amounts = [[0.25], [3.0], [0.0], [-1.0]];
    let inputs = serde_json::json!({"city": cities, "amount": amounts});
    let want = {
        std::fs::write(d.join("ref-in.json"), inputs.to_string()).unwrap();
        let o = std::process::Command::new(venv_python())
            .arg(root().join("tests/onnxruntime/make_models.py"))
            .args(["reference", tarball.to_str().unwrap()])
            .arg(d.join("ref-in.json"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs_by_name(&String::from_utf8(o.stdout).unwrap())
    };
    assert_eq!(want["tier"], serde_json::json!(["low", "high", "low", "low"]));
    std::fs::write(d.join("in.json"), inputs.to_string()).unwrap();
    let out = ok(run("neorun", d, &["predict", "s.neo", "--trusted-key", "k.pub", "-i", "in.json"], &[(k, &v)], None));
    let got = outputs_by_name(&out);
    assert_eq!((&got["score"], &got["tier"]), (&want["score"], &want["tier"]), "{out}");

    // served: SageMaker JSON, the Open Inference Protocol's BYTES as JSON and
    // as binary data, concurrent requests merged by the dynamic batcher
    let server = serve_with_env(&bin("neorun"), d, &["s.neo", "--max-queue-delay", "20000"], &[(k, v.clone())]);
    let post = |path: &str, body: Vec<u8>, headers: &[(&str, &str)]| -> (u16, Vec<u8>, Option<String>) {
        let mut r = ureq::post(&format!("{}{path}", server.base));
        for (h, x) in headers {
            r = r.set(h, x);
        }
        let resp = match r.send_bytes(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        let status = resp.status();
        let header = resp.header("Inference-Header-Content-Length").map(str::to_string);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
        (status, bytes, header)
    };
    let (code, body, _) =
        post("/invocations", inputs.to_string().into_bytes(), &[("Content-Type", "application/json")]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(outputs_by_name(&String::from_utf8(body).unwrap())["tier"], want["tier"]);
    let name = m["model"]["name"].as_str().unwrap().to_string();
    let infer = format!("/v2/models/{name}/infer");
    let meta: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("{}/v2/models/{name}", server.base)).call().unwrap().into_string().unwrap(),
    )
    .unwrap();
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES", "{meta}");
    let oip = serde_json::json!({"inputs": [
        {"name": "city", "datatype": "BYTES", "shape": [4], "data": cities},
        {"name": "amount", "datatype": "FP32", "shape": [4, 1], "data": [0.25, 3.0, 0.0, -1.0]},
    ]});
    let (code, body, _) = post(&infer, oip.to_string().into_bytes(), &[]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let got = outputs_by_name(&String::from_utf8(body).unwrap());
    assert_eq!((&got["score"], &got["tier"]), (&want["score"], &want["tier"]));
    // binary BYTES: a 4-byte little-endian length before each string, both ways
    let mut raw = Vec::new();
    for c in cities {
        raw.extend((c.len() as u32).to_le_bytes());
        raw.extend(c.as_bytes());
    }
    let floats: Vec<u8> = [0.25f32, 3.0, 0.0, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = serde_json::json!({
        "inputs": [
            {"name": "city", "datatype": "BYTES", "shape": [4], "parameters": {"binary_data_size": raw.len()}},
            {"name": "amount", "datatype": "FP32", "shape": [4, 1], "parameters": {"binary_data_size": 16}},
        ],
        "outputs": [{"name": "tier", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let len = header.len().to_string();
    let body = [header.as_bytes(), &raw, &floats].concat();
    let (code, answer, json_len) =
        post(&infer, body, &[("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", &len)]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let n: usize = json_len.expect("a binary answer").parse().unwrap();
    let mut tiers = Vec::new();
    for t in want["tier"].as_array().unwrap() {
        let t = t.as_str().unwrap();
        tiers.extend((t.len() as u32).to_le_bytes());
        tiers.extend(t.as_bytes());
    }
    assert_eq!(&answer[n..], &tiers[..]);
    // eight clients at once, one row each (the dynamic batcher may merge
    // them): each gets its own row back
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let post = &post;
                s.spawn(move || {
                    let city = cities[i % 4];
                    let body = serde_json::json!({"city": [city], "amount": [[amounts[i % 4][0]]]}).to_string();
                    let (code, b, _) = post("/invocations", body.into_bytes(), &[("Content-Type", "application/json")]);
                    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&b));
                    (i, outputs_by_name(&String::from_utf8(b).unwrap())["tier"].clone())
                })
            })
            .collect();
        for h in hs {
            let (i, tier) = h.join().unwrap();
            assert_eq!(tier, serde_json::json!([[want["tier"][i % 4].clone()]]).as_array().unwrap()[0], "client {i}");
        }
    });
    // bad: a number where a string goes, a binary length past the data
    let (code, body, _) = post(
        "/invocations",
        br#"{"city": ["Paris", 7], "amount": [[1.0], [2.0]]}"#.to_vec(),
        &[("Content-Type", "application/json")],
    );
    let body = String::from_utf8(body).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("input `city`, element 1: 7 is not a string"), "{body}");
    let header = serde_json::json!({"inputs": [
        {"name": "city", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}},
        {"name": "amount", "datatype": "FP32", "shape": [1, 1], "data": [1.0]},
    ]})
    .to_string();
    let len = header.len().to_string();
    let (code, body, _) =
        post(&infer, [header.as_bytes(), &[200, 0, 0, 0, b'P']].concat(), &[("Inference-Header-Content-Length", &len)]);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("input `city`: binary BYTES data") && body.contains("runs past the data"), "{body}");
    drop(server);

    // tract cannot take it, and says why, when forced
    let e = fails(compile_in(d, &tarball, "t.neo", &["--engine", "tract"], &[(k, &v)]), 4);
    assert!(e.contains("LabelEncoder"), "{e}");
    assert!(!d.join("t.neo").exists());
}

/// A CUDA target's onnxruntime bundle, on this host without a GPU: it is
/// verified on onnxruntime's CPU execution provider and says so; the CPU
/// wheel here has no CUDA provider, so opening it fails naming what the
/// device needs, and `--cpu-fallback` runs the same model on the CPU. The
/// GPU itself is exercised by bench/gpu/onnxruntime.sh on a GPU machine.
#[test]
fn cuda_targets_get_onnxruntime_bundles_for_its_cuda_provider() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ort_env();
    let cnn = root().join("models/image-cnn/model.tar.gz");
    let o = compile_in(d, &cnn, "g.neo", &["--engine", "onnxruntime", "--target", "cuda-sm80"], &[(k, &v)]);
    let out = ok(o.clone()) + &stderr(&o);
    assert!(out.contains("verified here on the CPU execution provider only, not run on a GPU"), "{out}");
    let m = manifest(d, "g.neo");
    assert_eq!(
        (m["engine"]["name"].as_str(), m["target"]["accelerator"].as_str()),
        (Some("onnxruntime"), Some("cuda"))
    );
    assert_eq!(m["engine"]["options"]["execution_provider"], "cuda", "{m:#}");
    assert!(m["verification"]["note"].as_str().unwrap().contains("which neoc cannot run without a GPU"), "{m:#}");
    assert!(m["gpu_placement"].is_null(), "tract's dry run is not onnxruntime's placement: {m:#}");
    // a CPU bundle records no provider, so older neoruns still open it
    ok(compile_in(d, &cnn, "c.neo", &["--engine", "onnxruntime"], &[(k, &v)]));
    assert!(manifest(d, "c.neo")["engine"]["options"].get("execution_provider").is_none());

    let check = |extra: &[&str], lib: &str| {
        let args = [&["check", "g.neo", "--trusted-key", "k.pub"][..], extra].concat();
        run("neorun", d, &args, &[(k, lib)], None)
    };
    let e = fails(check(&[], &v), 3);
    assert!(
        e.contains("compiled for cuda-sm80 (CUDA, onnxruntime)")
            && e.contains("libonnxruntime_providers_cuda.so is missing")
            && e.contains("pip install onnxruntime-gpu")
            && e.contains("--cpu-fallback"),
        "{e}"
    );
    let out = ok(check(&["--cpu-fallback"], &v));
    assert!(
        out.contains("onnxruntime (fp32, CPU execution provider, fallback for CUDA)") && out.contains("pass"),
        "{out}"
    );
    // a provider file beside a CPU build: onnxruntime's own refusal, surfaced
    let lib = d.join("ort");
    std::fs::create_dir(&lib).unwrap();
    for f in std::fs::read_dir(&v).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("libonnxruntime") {
            std::fs::copy(f.path(), lib.join(f.file_name())).unwrap();
        }
    }
    std::fs::write(lib.join("libonnxruntime_providers_cuda.so"), b"not a library").unwrap();
    let e = fails(check(&[], lib.to_str().unwrap()), 3);
    assert!(e.contains("CUDA execution provider cannot start here") && e.contains("onnxruntime-gpu"), "{e}");
    // tract's CUDA runtime stays the first choice of CUDA targets
    let o = compile_in(d, &cnn, "t.neo", &["--target", "cuda-sm80"], &[(k, &v)]);
    ok(o);
    let m = manifest(d, "t.neo");
    assert_eq!(m["engine"]["name"], "tract", "{m:#}");
    let cands = m["engine_selection"]["candidates"].as_array().unwrap();
    assert_eq!(cands[1]["engine"], "onnxruntime", "{m:#}");
    assert_eq!(cands[1]["status"], "not chosen (later in the target's order)", "{m:#}");
}
