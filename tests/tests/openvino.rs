//! The OpenVINO engine, for real: the `openvino` pip package in the test
//! venv provides `libopenvino_c`; `neoc` verifies and times the OpenVINO
//! model against tract's, `neorun` runs it, and outputs match onnxruntime's.
//! The bad inputs: no library, a library of the wrong version or without
//! the C API, a tampered ONNX part, bf16 or OpenVINO where a target cannot
//! have them.

use std::path::{Path, PathBuf};

use neoc_e2e::*;

/// `openvino/libs` of the test venv (pip-installed from models/requirements.txt).
fn openvino_libs() -> PathBuf {
    let libs = venv_site_packages().join("openvino/libs");
    assert!(libs.is_dir(), "{} is missing: pip install -r models/requirements.txt", libs.display());
    libs
}

fn ov_env() -> (&'static str, String) {
    ("OPENVINO_LIB_PATH", openvino_libs().to_str().unwrap().to_string())
}

/// `neoc compile models/image-cnn/model.tar.gz --target T …` with OpenVINO found.
fn compile_cnn(dir: &Path, target: &str, extra: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let model = root().join("models/image-cnn/model.tar.gz");
    let mut args = vec!["compile", model.to_str().unwrap(), "--target", target, "--key", "k.key", "-o", "cnn.neo"];
    args.extend_from_slice(extra);
    run("neoc", dir, &args, envs, None)
}

fn manifest(dir: &Path, bundle: &str) -> serde_json::Value {
    manifest_of(dir, bundle)
}

fn host_has(feature: &str) -> bool {
    neoc_targets::Host::detect().features.contains(&feature)
}

#[test]
fn openvino_bundle_runs_and_matches_onnxruntime() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    // the generic target, so that any x86-64 host runs it
    ok(compile_cnn(d, "x86_64", &["--engine", "openvino"], &[(k, &v)]));
    let m = manifest(d, "cnn.neo");
    assert_eq!(m["engine"]["name"], "openvino", "{m:#}");
    assert_eq!(m["engine"]["model_file"], "model.onnx");
    assert!(m["engine"]["version"].as_str().unwrap().starts_with("2026."), "{m:#}");
    assert_eq!(m["fallback_engine"]["name"], "tract");
    assert_eq!(m["target"]["precision"], "fp32");
    assert_eq!(m["engine_selection"]["method"], "requested");
    let files: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(files.contains(&"model.onnx") && files.contains(&"model.nnef.tar"), "{files:?}");
    // the stock minisign accepts the signature that covers both models' digests
    assert_minisign_accepts(d, "cnn.neo");

    let sample = root().join("models/image-cnn/sample.json");
    let tol = m["verification"]["atol"].as_f64().unwrap() + 1e-6;
    let out = ok(run(
        "neorun",
        d,
        &["predict", "cnn.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()],
        &[(k, &v)],
        None,
    ));
    assert_close(&response_data(&out), &expected("image-cnn"), tol);
    // the device-side health check runs through OpenVINO as well
    let out = ok(run(
        "neorun",
        d,
        &["bench", "cnn.neo", "--trusted-key", "k.pub", "--iterations", "5", "--json"],
        &[(k, &v)],
        None,
    ));
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["engine"], "openvino");
    assert!(b["running"].as_str().unwrap().starts_with("openvino"), "{b}");
}

#[test]
fn auto_verifies_and_times_every_engine_and_records_the_choice() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    let out = ok(compile_cnn(d, "x86_64-avx512", &["--explain"], &[(k, &v)]));
    let m = manifest(d, "cnn.neo");
    let sel = &m["engine_selection"];
    let cands = sel["candidates"].as_array().unwrap();
    let names: Vec<String> = cands
        .iter()
        .map(|c| format!("{} {}", c["engine"].as_str().unwrap(), c["precision"].as_str().unwrap()))
        .collect();
    // onnxruntime is the target's third engine; its library is not pointed at here
    assert_eq!(names, ["openvino fp32", "tract fp32", "onnxruntime fp32"], "{sel:#}");
    assert!(cands[2]["status"].as_str().unwrap().starts_with("unavailable"), "{sel:#}");
    let cands = &cands[..2];
    for c in cands {
        assert!(c["max_abs_error"].as_f64().unwrap() <= 1e-4, "{sel:#}");
    }
    assert!(out.contains("selection"), "{out}");
    if neoc_targets::lookup("x86_64-avx512").unwrap().features.iter().all(|f| host_has(f)) {
        // this host runs the target: both were timed; the target's first
        // engine stays unless the other is faster beyond the margin
        assert_eq!(sel["method"], "measured", "{sel:#}");
        let t: Vec<f64> = cands.iter().map(|c| c["median_us"].as_f64().unwrap()).collect();
        let chosen = cands.iter().position(|c| c["status"] == "chosen").unwrap();
        if chosen != 0 {
            assert!(t[chosen] < t[0] * 0.95 /* pipeline::ENGINE_MARGIN */, "{sel:#}");
        }
        assert!(cands.iter().all(|c| c["spread_us"].as_f64().is_some()), "{sel:#}");
        assert_eq!(m["engine"]["name"], cands[chosen]["engine"]);
    } else {
        assert_eq!(sel["method"], "preference", "{sel:#}");
        assert_eq!(m["engine"]["name"], "openvino");
    }
    // without the library the model still compiles, for tract, and says why
    let out = ok(compile_cnn(d, "x86_64-avx512", &[], &[("OPENVINO_LIB_PATH", d.to_str().unwrap())]));
    assert!(out.contains("openvino fp32 unavailable") && out.contains("OPENVINO_LIB_PATH"), "{out}");
    assert_eq!(manifest(d, "cnn.neo")["engine"]["name"], "tract");
}

#[test]
fn bf16_is_verified_against_fp32_or_refused_where_it_cannot_be() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    let o = compile_cnn(d, "x86_64-amx", &["--engine", "openvino", "--precision", "bf16"], &[(k, &v)]);
    if host_has("avx512bf16") || host_has("amx-bf16") {
        ok(o);
        let m = manifest(d, "cnn.neo");
        assert_eq!(m["target"]["precision"], "bf16");
        assert_eq!(m["verification"]["precision"], "bf16");
        let err = m["verification"]["max_abs_error"].as_f64().unwrap();
        // bf16 really computed (an fp32 run differs by ~1e-8), within its tolerance
        assert!(err > 1e-5 && err <= m["verification"]["atol"].as_f64().unwrap(), "{m:#}");
        // a tolerance bf16 cannot meet refuses it
        let e = fails(
            compile_cnn(
                d,
                "x86_64-amx",
                &["--engine", "openvino", "--precision", "bf16", "--tolerance", "1e-6", "--rtol", "0"],
                &[(k, &v)],
            ),
            3,
        );
        assert!(e.contains("beyond tolerance"), "{e}");
    } else {
        let e = fails(o, 1);
        assert!(e.contains("no bf16 arithmetic") && e.contains("cannot be verified"), "{e}");
    }
}

#[test]
fn openvino_library_missing_or_incompatible_is_named_and_fallback_is_opt_in() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    ok(compile_cnn(d, "x86_64", &["--engine", "openvino"], &[(k, &v)]));
    let sample = root().join("models/image-cnn/sample.json");
    let predict = |envs: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["predict", "cnn.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()];
        args.extend_from_slice(extra);
        run("neorun", d, &args, envs, None)
    };
    // no library where OPENVINO_LIB_PATH points
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(predict(&[("OPENVINO_LIB_PATH", empty.to_str().unwrap())], &[]), 3);
    assert!(e.contains("holds no libopenvino_c.so") && e.contains("pip install openvino"), "{e}");
    assert!(e.contains("--engine-fallback"), "{e}");
    // with --engine-fallback, the bundle's tract model answers, and says so
    let o = predict(&[("OPENVINO_LIB_PATH", empty.to_str().unwrap())], &["--engine-fallback"]);
    let out = ok(o.clone());
    assert!(stderr(&o).contains("fallback for openvino"), "{}", stderr(&o));
    assert_close(&response_data(&out), &expected("image-cnn"), 1e-4);

    // stand-in libraries built here: one without the C API, one too old,
    // one new enough for neorun but older than the bundle was verified with
    let fake = |name: &str, version: &str, all: bool| -> PathBuf {
        let src = d.join(format!("{name}.c"));
        let mut c = format!(
            "typedef struct {{ const char* b; const char* d; }} v_t;\nint ov_get_openvino_version(v_t* v) {{ v->b = \"{version}\"; v->d = \"stand-in\"; return 0; }}\nvoid ov_version_free(v_t* v) {{}}\n"
        );
        if all {
            for f in neoc_runtime_required() {
                if !f.starts_with("ov_get_openvino_version") && f != "ov_version_free" {
                    c.push_str(&format!("int {f}(void) {{ return -1; }}\n"));
                }
            }
        }
        std::fs::write(&src, c).unwrap();
        let so = d.join(format!("{name}/libopenvino_c.so"));
        std::fs::create_dir_all(so.parent().unwrap()).unwrap();
        let st = std::process::Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).status().unwrap();
        assert!(st.success(), "cc failed");
        so
    };
    let partial = fake("partial", "2026.4.1-1-stand-in", false);
    let e = fails(predict(&[("OPENVINO_LIB_PATH", partial.to_str().unwrap())], &[]), 3);
    assert!(e.contains("not a compatible OpenVINO C library") && e.contains("ov_core_create"), "{e}");
    let old = fake("old", "2024.6.0-17404-stand-in", true);
    let e = fails(predict(&[("OPENVINO_LIB_PATH", old.to_str().unwrap())], &[]), 3);
    assert!(e.contains("is OpenVINO 2024.6") && e.contains("2025.1 or newer"), "{e}");
    let older_than_bundle = fake("older", "2025.2.0-1-stand-in", true);
    let e = fails(predict(&[("OPENVINO_LIB_PATH", older_than_bundle.to_str().unwrap())], &[]), 3);
    assert!(e.contains("verified with OpenVINO 2026.") && e.contains("2025.2.0"), "{e}");
}

/// The functions neorun checks a library for (runtime/src/engine/openvino.rs).
fn neoc_runtime_required() -> Vec<String> {
    let src = std::fs::read_to_string(root().join("runtime/src/engine/openvino.rs")).unwrap();
    let start = src.find("const REQUIRED").unwrap();
    let end = start + src[start..].find("];").unwrap();
    src[start..end].split('"').skip(1).step_by(2).map(|s| s.to_string()).collect()
}

#[test]
fn a_tampered_openvino_model_is_refused_like_any_other_file() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    ok(compile_cnn(d, "x86_64", &["--engine", "openvino"], &[(k, &v)]));
    let mut bytes = std::fs::read(d.join("cnn.neo")).unwrap();
    // the ONNX part's contents start one 512-byte header after its name
    let at = bytes.windows(11).position(|w| w == b"model.onnx\0").expect("model.onnx entry");
    bytes[at + 512 + 200] ^= 0x01;
    std::fs::write(d.join("bad.neo"), &bytes).unwrap();
    let sample = root().join("models/image-cnn/sample.json");
    let e = fails(
        run(
            "neorun",
            d,
            &["predict", "bad.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()],
            &[(k, &v)],
            None,
        ),
        3,
    );
    assert!(e.contains("model.onnx"), "{e}");
}

#[test]
fn bf16_and_openvino_are_refused_where_the_target_cannot_have_them() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    let e = fails(compile_cnn(d, "ml_c5", &["--precision", "bf16"], &[(k, &v)]), 1);
    assert!(e.contains("target ml_c5 has no bf16 arithmetic") && e.contains("ml_c7i"), "{e}");
    let e = fails(compile_cnn(d, "x86_64-amx", &["--engine", "tract", "--precision", "bf16"], &[(k, &v)]), 1);
    assert!(e.contains("only the OpenVINO engine computes in bf16"), "{e}");
    let e = fails(compile_cnn(d, "rasp4b", &["--engine", "openvino"], &[(k, &v)]), 1);
    assert!(e.contains("x86-64 targets only") && e.contains("rasp4b is aarch64"), "{e}");
    let e = fails(compile_cnn(d, "ml_g5", &["--engine", "openvino"], &[(k, &v)]), 1);
    assert!(e.contains("cuda accelerator"), "{e}");
    let e = fails(run("neoc", d, &["compile", "x.onnx", "--target", "x86_64", "--engine", "tensorrt"], &[], None), 2);
    assert!(e.contains("not an engine (auto, tract, openvino or onnxruntime)"), "{e}");
    // OpenVINO asked for where neoc cannot load it: what to install
    let e =
        fails(compile_cnn(d, "x86_64", &["--engine", "openvino"], &[("OPENVINO_LIB_PATH", d.to_str().unwrap())]), 1);
    assert!(e.contains("--engine openvino for x86_64") && e.contains("pip install openvino"), "{e}");
    // trees never go to OpenVINO
    let xgb = root().join("models/fraud-xgb/xgboost-model.json");
    let e = fails(
        run(
            "neoc",
            d,
            &["compile", xgb.to_str().unwrap(), "--target", "x86_64", "--engine", "openvino", "--unsigned"],
            &[(k, &v)],
            None,
        ),
        1,
    );
    assert!(e.contains("tree ensembles run on the trees engine"), "{e}");
}

#[test]
fn no_fallback_bundles_carry_only_the_openvino_model() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    ok(compile_cnn(d, "x86_64", &["--engine", "openvino", "--no-fallback"], &[(k, &v)]));
    let m = manifest(d, "cnn.neo");
    assert!(m.get("fallback_engine").is_none_or(|f| f.is_null()), "{m:#}");
    let files: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["model.onnx", "test_vectors.bin", "test_vectors.json"]);
    let sample = root().join("models/image-cnn/sample.json");
    let args =
        ["predict", "cnn.neo", "--trusted-key", "k.pub", "--engine-fallback", "--input", sample.to_str().unwrap()];
    // runs where OpenVINO loads; elsewhere --engine-fallback has nothing to fall back to
    assert_close(&response_data(&ok(run("neorun", d, &args, &[(k, &v)], None))), &expected("image-cnn"), 1e-4);
    let e = fails(run("neorun", d, &args, &[("OPENVINO_LIB_PATH", d.to_str().unwrap())], None), 3);
    assert!(e.contains("holds no libopenvino_c.so") && !e.contains("--engine-fallback to run"), "{e}");
}

/// `neorun serve` with an OpenVINO bundle: concurrent clients, every answer
/// equal to onnxruntime's, through the SageMaker route.
#[test]
fn serve_runs_an_openvino_bundle_for_concurrent_clients() {
    use std::io::{BufRead, BufReader};
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    ok(compile_cnn(d, "x86_64", &["--engine", "openvino"], &[(k, &v)]));
    let mut child = std::process::Command::new(bin("neorun"))
        .current_dir(d)
        .args(["serve", "cnn.neo", "--trusted-key", "k.pub", "--port", "0", "--threads", "2"])
        .env(k, &v)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}")).to_string();
    let body = std::fs::read(root().join("models/image-cnn/sample.json")).unwrap();
    let want = expected("image-cnn");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    let resp = ureq::post(&format!("{base}/invocations"))
                        .set("Content-Type", "application/json")
                        .send_bytes(&body)
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    assert_close(&response_data(&resp.into_string().unwrap()), &want, 1e-4);
                }
            });
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

/// With the engine and precision pinned nothing is timed, so the bundle is
/// byte-identical across compiles; a timed `auto` records its timings.
#[test]
fn pinned_openvino_bundles_are_reproducible() {
    let dir = scratch();
    let d = dir.path();
    let (k, v) = ov_env();
    let envs = [(k, v.as_str()), ("SOURCE_DATE_EPOCH", "1700000000")];
    let pinned = ["--engine", "openvino", "--precision", "fp32"];
    ok(compile_cnn(d, "x86_64-avx512", &pinned, &envs));
    let first = std::fs::read(d.join("cnn.neo")).unwrap();
    ok(compile_cnn(d, "x86_64-avx512", &pinned, &envs));
    assert!(first == std::fs::read(d.join("cnn.neo")).unwrap(), "two pinned compiles differ");
    let m = manifest(d, "cnn.neo");
    assert!(
        m["engine_selection"]["candidates"].as_array().unwrap().iter().all(|c| c.get("median_us").is_none()),
        "{m:#}"
    );
}
