//! compile → sign → verify → predict, with the real binaries, the sample
//! models, and the stock `minisign` tool.
//!
//! (Over 600 lines: one test per user-visible behaviour of compile → sign →
//! verify → predict; they share the scratch and helper set-up of this file.)

use std::path::Path;

use neoc_e2e::*;

#[test]
fn fraud_mlp_predicts_like_onnxruntime() {
    let dir = scratch();
    let b = compile(dir.path(), "fraud-mlp:1", host_target(), &[]);
    let sample = root().join("models/fraud-mlp/sample.csv");
    let out = ok(predict(dir.path(), b.to_str().unwrap(), sample.to_str().unwrap()));
    assert_close(&response_data(&out), &expected("fraud-mlp"), 1e-5);

    // the same request from stdin, answered as CSV: one line per row
    let body = std::fs::read(&sample).unwrap();
    let out = ok(run(
        "neorun",
        dir.path(),
        &["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--content-type", "text/csv", "--accept", "csv"],
        &[],
        Some(&body),
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8);
    let csv: Vec<f64> = lines.iter().flat_map(|l| l.split(',').map(|v| v.parse::<f64>().unwrap())).collect();
    assert_close(&csv, &expected("fraud-mlp"), 1e-5);

    // JSON instances too
    let rows: Vec<Vec<f64>> =
        String::from_utf8(body).unwrap().lines().map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    let req = serde_json::to_vec(&serde_json::json!({ "instances": rows })).unwrap();
    let out =
        ok(run("neorun", dir.path(), &["predict", b.to_str().unwrap(), "--trusted-key", "k.pub"], &[], Some(&req)));
    assert_close(&response_data(&out), &expected("fraud-mlp"), 1e-5);
}

#[test]
fn image_cnn_predicts_like_onnxruntime() {
    let dir = scratch();
    let b = compile(dir.path(), "image-cnn:1", host_target(), &[]);
    let sample = root().join("models/image-cnn/sample.json");
    let out = ok(predict(dir.path(), b.to_str().unwrap(), sample.to_str().unwrap()));
    assert_close(&response_data(&out), &expected("image-cnn"), 1e-4);
    let check = ok(run("neorun", dir.path(), &["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], &[], None));
    assert!(check.contains("2 test vectors pass"), "{check}");
    // and with tract's kernels only (no neorun convolution, pooling, ... kernels)
    let args = ["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()];
    let stock = ok(run("neorun", dir.path(), &args, &[("NEORUN_KERNELS", "tract")], None));
    assert_close(&response_data(&stock), &expected("image-cnn"), 1e-4);
}

#[test]
fn compile_from_tarball_and_bare_file_with_input_config() {
    let dir = scratch();
    let tarball = root().join("models/fraud-mlp/model.tar.gz");
    ok(run(
        "neoc",
        dir.path(),
        &["compile", tarball.to_str().unwrap(), "--target", host_target(), "--key", "k.key", "-o", "t.neo"],
        &[],
        None,
    ));
    let inspect = ok(run("neoc", dir.path(), &["inspect", "t.neo", "--key", "k.pub", "--json"], &[], None));
    let doc: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["manifest"]["model"]["name"], "fraud-mlp");
    assert_eq!(doc["manifest"]["verification"]["inputs"], "test_data_set");
    assert_eq!(doc["manifest"]["inputs"][0]["shape"], serde_json::json!(["N", 30]));

    // a bare ONNX file, its batch fixed by --input: verified on seeded inputs
    let onnx = root().join("models/fraud-mlp/model.onnx");
    let out = ok(run(
        "neoc",
        dir.path(),
        &[
            "compile",
            onnx.to_str().unwrap(),
            "--target",
            host_target(),
            "--key",
            "k.key",
            "-o",
            "f.neo",
            "--input",
            "features=4,30:f32",
            "--json",
        ],
        &[],
        None,
    ));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["schema_version"], 2);
    assert_eq!(doc["inputs"][0]["shape"], serde_json::json!([4, 30]));
    assert_eq!(doc["bundles"][0]["verification"]["inputs"], "seeded");
    assert_eq!(doc["bundles"][0]["verification"]["status"], "passed");
    // a fixed batch of 4 takes exactly 4 rows
    let sample = root().join("models/fraud-mlp/sample.csv");
    let err = fails(predict(dir.path(), "f.neo", sample.to_str().unwrap()), 4);
    assert!(err.contains("exactly 4 rows"), "{err}");
    let four: String = std::fs::read_to_string(&sample).unwrap().lines().take(4).map(|l| format!("{l}\n")).collect();
    let out = ok(run(
        "neorun",
        dir.path(),
        &["predict", "f.neo", "--trusted-key", "k.pub", "--content-type", "csv"],
        &[],
        Some(four.as_bytes()),
    ));
    assert_close(&response_data(&out), &expected("fraud-mlp")[..8], 1e-5);
}

#[test]
fn stock_minisign_verifies_the_manifest() {
    let dir = scratch();
    let b = compile(dir.path(), "fraud-mlp:1", host_target(), &[]);
    let d = dir.path();
    let tar = std::process::Command::new("tar")
        .current_dir(d)
        .args(["-xf", b.to_str().unwrap(), "manifest.json", "manifest.json.minisig"])
        .status()
        .unwrap();
    assert!(tar.success());
    let v = std::process::Command::new("minisign")
        .current_dir(d)
        .args(["-Vm", "manifest.json", "-p", "k.pub"])
        .output()
        .expect("the stock `minisign` tool must be installed (apt-get install minisign)");
    assert!(v.status.success(), "minisign -V failed: {}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains("neoc bundle fraud-mlp:1"));
    let v = ok(run("neoc", d, &["verify", b.to_str().unwrap(), "--key", "k.pub"], &[], None));
    assert!(v.starts_with("ok:"), "{v}");
}

#[test]
fn keys_made_by_stock_minisign_sign_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let g = std::process::Command::new("minisign")
        .current_dir(d)
        .args(["-G", "-W", "-p", "m.pub", "-s", "m.key"])
        .output()
        .expect("the stock `minisign` tool must be installed (apt-get install minisign)");
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let registry = root().join("models/registry");
    ok(run(
        "neoc",
        d,
        &[
            "compile",
            "fraud-mlp:1",
            "--target",
            host_target(),
            "--key",
            "m.key",
            "-o",
            "b.neo",
            "--registry",
            registry.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    let sample = root().join("models/fraud-mlp/sample.csv");
    let out = ok(run(
        "neorun",
        d,
        &["predict", "b.neo", "--trusted-key", "m.pub", "--input", sample.to_str().unwrap()],
        &[],
        None,
    ));
    assert_close(&response_data(&out), &expected("fraud-mlp"), 1e-5);
    // NEOC_SIGNING_KEY works as --key
    ok(run(
        "neoc",
        d,
        &["compile", "fraud-mlp:1", "--target", host_target(), "-o", "c.neo", "--registry", registry.to_str().unwrap()],
        &[("NEOC_SIGNING_KEY", "m.key")],
        None,
    ));
    assert_eq!(std::fs::read(d.join("b.neo")).unwrap(), std::fs::read(d.join("c.neo")).unwrap());
}

#[test]
fn identical_inputs_give_identical_bundles() {
    let dir = scratch();
    let d = dir.path();
    let registry = root().join("models/registry");
    let build = |out: &str, epoch: &str| {
        ok(run(
            "neoc",
            d,
            &[
                "compile",
                "image-cnn:1",
                "--target",
                host_target(),
                "--key",
                "k.key",
                "-o",
                out,
                "--registry",
                registry.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", epoch)],
            None,
        ));
        std::fs::read(d.join(out)).unwrap()
    };
    let a = build("a.neo", "1700000000");
    let b = build("b.neo", "1700000000");
    assert!(a == b, "two compiles with the same inputs differ");
    let c = build("c.neo", "1700000001");
    assert!(a != c, "SOURCE_DATE_EPOCH is not recorded");
    let err = fails(
        run(
            "neoc",
            d,
            &[
                "compile",
                "image-cnn:1",
                "--target",
                host_target(),
                "--key",
                "k.key",
                "-o",
                "e.neo",
                "--registry",
                registry.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", "yesterday")],
            None,
        ),
        1,
    );
    assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
}

/// A compiled fraud-mlp bundle and its bytes, shared by the tampering tests.
fn signed_bundle() -> (tempfile::TempDir, Vec<u8>) {
    let dir = scratch();
    let b = compile(dir.path(), "fraud-mlp:1", host_target(), &[]);
    let bytes = std::fs::read(&b).unwrap();
    std::fs::rename(&b, dir.path().join("good.neo")).unwrap();
    (dir, bytes)
}

#[test]
fn neorun_refuses_a_bundle_with_any_flipped_byte() {
    let (dir, good) = signed_bundle();
    let d = dir.path();
    let sample = root().join("models/fraud-mlp/sample.csv");
    // every byte, through the library the runtime uses
    let trusted = neoc_bundle::sign::TrustedKey::from_file(&d.join("k.pub")).unwrap();
    let trust = neoc_bundle::container::Trust::Keys(vec![trusted]);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(
            neoc_bundle::container::read_from(&bad[..], bad.len() as u64, &trust).is_err(),
            "flipping byte {i} of {} went unnoticed",
            good.len()
        );
    }
    // a spread of bytes (headers, manifest, signature, model, padding, trailer) through the binary
    let n = good.len();
    let mut positions: Vec<usize> = (0..24).map(|k| k * n / 24).collect();
    positions.extend([1, 100, 148, 600, 1100, n - 1, n - 600, n - 1024]);
    for i in positions {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        std::fs::write(d.join("bad.neo"), &bad).unwrap();
        let err = fails(predict(d, "bad.neo", sample.to_str().unwrap()), 3);
        assert!(err.contains("bundle refused"), "byte {i}: {err}");
    }
}

#[test]
fn truncated_and_garbage_bundles_are_refused() {
    let (dir, good) = signed_bundle();
    let d = dir.path();
    for len in [0, 100, 512, 2048, good.len() / 2, good.len() - 1024, good.len() - 1] {
        std::fs::write(d.join("t.neo"), &good[..len]).unwrap();
        let err = fails(run("neorun", d, &["check", "t.neo", "--trusted-key", "k.pub"], &[], None), 3);
        assert!(err.contains("truncated") || err.contains("not a valid neoc bundle"), "len {len}: {err}");
    }
    std::fs::write(d.join("g.neo"), b"this is not a bundle at all, just text".repeat(40)).unwrap();
    let err = fails(run("neorun", d, &["check", "g.neo", "--trusted-key", "k.pub"], &[], None), 3);
    assert!(err.contains("not a valid neoc bundle"), "{err}");
    let err = fails(run("neorun", d, &["check", "missing.neo", "--trusted-key", "k.pub"], &[], None), 3);
    assert!(err.contains("missing.neo"), "{err}");
}

#[test]
fn wrong_missing_or_mixed_up_keys_are_refused() {
    let (dir, _) = signed_bundle();
    let d = dir.path();
    ok(run("neoc", d, &["keygen", "-o", "other"], &[], None));
    let err = fails(run("neorun", d, &["check", "good.neo", "--trusted-key", "other.pub"], &[], None), 3);
    assert!(err.contains("not trusted") && err.contains("--trusted-key"), "{err}");
    let err = fails(run("neorun", d, &["check", "good.neo"], &[], None), 1);
    assert!(err.contains("no trusted key"), "{err}");
    // a key that cannot be used is a set-up error (exit 1), not a verdict on the bundle (exit 3)
    let err = fails(run("neorun", d, &["check", "good.neo", "--trusted-key", "nope.pub"], &[], None), 1);
    assert!(err.contains("--trusted-key") && err.contains("nope.pub") && !err.contains("bundle refused"), "{err}");
    let err = fails(run("neorun", d, &["check", "good.neo", "--trusted-key", "k.key"], &[], None), 1);
    assert!(err.contains("secret key"), "{err}");
    // trusting no key at all (--allow-unsigned only) names no empty list
    let err = fails(run("neorun", d, &["check", "good.neo", "--allow-unsigned"], &[], None), 3);
    assert!(err.contains("no key is trusted") && !err.contains("trusted: )"), "{err}");
    // signing: a public key, a missing key, no key at all
    let registry = root().join("models/registry");
    let reg = registry.to_str().unwrap();
    let err = fails(
        run(
            "neoc",
            d,
            &["compile", "fraud-mlp:1", "--target", host_target(), "--key", "k.pub", "-o", "x.neo", "--registry", reg],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("public key"), "{err}");
    let err = fails(
        run(
            "neoc",
            d,
            &[
                "compile",
                "fraud-mlp:1",
                "--target",
                host_target(),
                "--key",
                "none.key",
                "-o",
                "x.neo",
                "--registry",
                reg,
            ],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("none.key"), "{err}");
    let err = fails(
        run(
            "neoc",
            d,
            &["compile", "fraud-mlp:1", "--target", host_target(), "-o", "x.neo", "--registry", reg],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("no signing key") && err.contains("neoc keygen"), "{err}");
    assert!(!d.join("x.neo").exists());
    // keygen does not overwrite keys
    let err = fails(run("neoc", d, &["keygen", "-o", "k"], &[], None), 1);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn unsigned_bundles_need_allow_unsigned() {
    let dir = scratch();
    let d = dir.path();
    let registry = root().join("models/registry");
    ok(run(
        "neoc",
        d,
        &[
            "compile",
            "fraud-mlp:1",
            "--target",
            host_target(),
            "--unsigned",
            "-o",
            "u.neo",
            "--registry",
            registry.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    let err = fails(run("neorun", d, &["check", "u.neo", "--trusted-key", "k.pub"], &[], None), 3);
    assert!(err.contains("not signed") && err.contains("--allow-unsigned"), "{err}");
    let out = ok(run("neorun", d, &["check", "u.neo", "--allow-unsigned"], &[], None));
    assert!(out.contains("UNSIGNED"), "{out}");
}

#[test]
fn bundles_for_another_architecture_are_refused() {
    let dir = scratch();
    let foreign = if cfg!(target_arch = "x86_64") { "rasp4b" } else { "ml_c5" };
    let b = compile(dir.path(), "fraud-mlp:1", foreign, &[]);
    let err = fails(run("neorun", dir.path(), &["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], &[], None), 3);
    let expect = if cfg!(target_arch = "x86_64") {
        "compiled for rasp4b (aarch64), this host is x86_64"
    } else {
        "compiled for ml_c5 (x86_64)"
    };
    assert!(err.contains(expect), "{err}");
}

#[test]
fn bad_requests_are_explained() {
    let (dir, _) = signed_bundle();
    let d = dir.path();
    let predict = |body: &str, extra: &[&str]| {
        let mut args = vec!["predict", "good.neo", "--trusted-key", "k.pub"];
        args.extend_from_slice(extra);
        run("neorun", d, &args, &[], Some(body.as_bytes()))
    };
    let row29 = vec!["0.5"; 29].join(",");
    let err = fails(predict(&row29, &["--content-type", "csv"]), 4);
    assert!(err.contains("has 29 values") && err.contains("takes 30"), "{err}");
    let row30 = vec!["0.5"; 30].join(",");
    let err = fails(predict(&row30.replace("0.5,0.5", "0.5,abc"), &["--content-type", "csv"]), 4);
    assert!(err.contains("`abc` is not a number"), "{err}");
    let err = fails(predict("[[1,2,3]]", &[]), 4);
    assert!(err.contains("expects shape [N,30]"), "{err}");
    let err = fails(predict(&format!("[[{}, \"x\"]]", vec!["1"; 29].join(",")), &[]), 4);
    assert!(err.contains("is not a number"), "{err}");
    let err = fails(predict("{\"inputs\": [[1, 2]", &[]), 4);
    assert!(err.contains("not valid JSON"), "{err}");
    let err = fails(predict("", &["--content-type", "csv"]), 4);
    assert!(err.contains("no rows"), "{err}");
    let err = fails(predict(&row30, &["--content-type", "xml"]), 1);
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn image_inputs_of_the_wrong_shape_are_explained() {
    let dir = scratch();
    let b = compile(dir.path(), "image-cnn:1", host_target(), &[]);
    let img = serde_json::json!({"inputs": vec![vec![vec![0.0f32; 32]; 32]; 3]});
    let out = run(
        "neorun",
        dir.path(),
        &["predict", b.to_str().unwrap(), "--trusted-key", "k.pub"],
        &[],
        Some(img.to_string().as_bytes()),
    );
    let err = fails(out, 4);
    assert!(err.contains("expects shape [1,3,64,64]") && err.contains("[3, 32, 32]"), "{err}");
}

#[test]
fn unknown_target_lists_the_known_ones() {
    let dir = scratch();
    let err = fails(
        run("neoc", dir.path(), &["compile", "fraud-mlp:1", "--target", "ml_c99", "--key", "k.key"], &[], None),
        1,
    );
    assert!(err.contains("unknown target `ml_c99`") && err.contains("rasp4b") && err.contains("ml_m6g"), "{err}");
    let list = ok(run("neoc", dir.path(), &["targets", "--json"], &[], None));
    let doc: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = doc["targets"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for t in ["x86_64", "x86_64-avx512", "aarch64", "armv7", "ml_c5", "ml_m6g", "rasp4b", "jetson_orin"] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
}

fn compile_file(d: &Path, model: &Path) -> std::process::Output {
    run(
        "neoc",
        d,
        &["compile", model.to_str().unwrap(), "--target", host_target(), "--unsigned", "-o", "out.neo"],
        &[],
        None,
    )
}

#[test]
fn unsupported_operators_are_all_listed_at_once() {
    let dir = scratch();
    let d = dir.path();
    let err = fails(compile_file(d, &root().join("models/bad/unsupported-ops.onnx")), 4);
    assert!(err.contains("2 unsupported operators"), "{err}");
    assert!(
        err.contains("`custom_act`: com.example::FancyActivation")
            && err.contains("`custom_norm`: com.example::MysteryNorm"),
        "{err}"
    );
    let err = fails(compile_file(d, &root().join("models/bad/unserializable-ops.onnx")), 4);
    // known from the ONNX node, so named as the model names it, before any typing
    assert!(err.contains("node `dyn_quant`: DynamicQuantizeLinear") && err.contains("cannot carry"), "{err}");
    assert!(!d.join("out.neo").exists());
}

/// Probabilities (second output) of a `neorun predict` JSON response.
fn probabilities(json: &str) -> Vec<f64> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    doc["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn fraud_xgb_predicts_like_xgboost_from_json_and_from_onnx() {
    let dir = scratch();
    for tag in ["fraud-xgb:1", "fraud-xgb:1-onnx"] {
        let b = compile(dir.path(), tag, host_target(), &[]);
        let inspect = ok(run("neoc", dir.path(), &["inspect", b.to_str().unwrap(), "--json"], &[], None));
        let doc: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(doc["manifest"]["engine"]["name"], "trees", "{tag}");
        // the tarball ships XGBoost's own outputs: verification compared with them
        assert_eq!(doc["manifest"]["verification"]["inputs"], "test_data_set", "{tag}");
        assert!(doc["manifest"]["verification"]["independent"]["max_abs_error"].as_f64().unwrap() <= 1e-6, "{tag}");
        for (sample, want) in [("sample.csv", "expected.json"), ("sample-missing.csv", "expected-missing.json")] {
            let input = root().join("models/fraud-xgb").join(sample);
            let out = ok(predict(dir.path(), b.to_str().unwrap(), input.to_str().unwrap()));
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(root().join("models/fraud-xgb").join(want)).unwrap()).unwrap();
            let want: Vec<f64> =
                doc["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let got = probabilities(&out);
            assert_close(&got, &want, 1e-6);
            // labels come from the probabilities
            let labels = response_data(&out);
            for (r, l) in labels.iter().enumerate() {
                assert_eq!(*l, if got[2 * r + 1] > got[2 * r] { 1.0 } else { 0.0 }, "{tag} {sample} row {r}");
            }
        }
    }
}

/// Writes a modified copy of the sample XGBoost model and tries to compile it.
fn compile_edited_xgboost(d: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/fraud-xgb/xgboost-model.json")).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(d.join("xgboost-model.json"), serde_json::to_vec(&doc).unwrap()).unwrap();
    let err = fails(compile_file(d, &d.join("xgboost-model.json")), 1);
    assert!(!d.join("out.neo").exists());
    err
}

#[test]
fn malformed_xgboost_models_are_explained() {
    let dir = scratch();
    let d = dir.path();
    let tree0 = "/learner/gradient_booster/model/trees/0";
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut(&format!("{tree0}/left_children/0")).map(|v| *v = 5000.into()).unwrap()
    });
    assert!(err.contains("tree 0, node 0: child 5000 is out of range"), "{err}");
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut(&format!("{tree0}/left_children/1")).map(|v| *v = 0.into()).unwrap()
    });
    assert!(err.contains("reached twice"), "{err}");
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut(&format!("{tree0}/split_indices/0")).map(|v| *v = 31.into()).unwrap()
    });
    assert!(err.contains("feature 31 is beyond the input width 30"), "{err}");
    // an index past u32 used to be truncated (2^40 became feature 0) and signed
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut(&format!("{tree0}/split_indices/0")).map(|v| *v = (1u64 << 40).into()).unwrap()
    });
    assert!(err.contains("tree 0, node 0: split index 1099511627776 is out of range"), "{err}");
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut("/learner/objective/name").map(|v| *v = "survival:cox".into()).unwrap()
    });
    assert!(err.contains("objective `survival:cox` is not supported"), "{err}");
    let err = compile_edited_xgboost(d, |m| {
        m.pointer_mut(&format!("{tree0}/split_conditions")).unwrap().as_array_mut().unwrap().pop();
    });
    assert!(err.contains("different lengths"), "{err}");
    // truncated file
    let text = std::fs::read(root().join("models/fraud-xgb/xgboost-model.json")).unwrap();
    std::fs::write(d.join("xgboost-model.json"), &text[..text.len() / 2]).unwrap();
    let err = fails(compile_file(d, &d.join("xgboost-model.json")), 1);
    assert!(err.contains("not a valid XGBoost JSON model"), "{err}");
}

#[test]
fn fraud_lgbm_predicts_like_lightgbm() {
    let dir = scratch();
    let b = compile(dir.path(), "fraud-lgbm:1", host_target(), &[]);
    let sample = root().join("models/fraud-lgbm/sample.csv");
    let out = ok(predict(dir.path(), b.to_str().unwrap(), sample.to_str().unwrap()));
    assert_close(&probabilities(&out), &expected("fraud-lgbm"), 1e-6);
    let check = ok(run("neorun", dir.path(), &["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], &[], None));
    assert!(check.contains("1 test vectors pass"), "{check}");
}

#[test]
fn malformed_lightgbm_models_are_explained() {
    let dir = scratch();
    let d = dir.path();
    let text = std::fs::read_to_string(root().join("models/fraud-lgbm/lightgbm-model.txt")).unwrap();
    let cut = text.find("leaf_value=").unwrap();
    std::fs::write(d.join("lightgbm-model.txt"), &text[..cut]).unwrap();
    let err = fails(compile_file(d, &d.join("lightgbm-model.txt")), 1);
    assert!(err.contains("`leaf_value` is missing"), "{err}");
    std::fs::write(d.join("lightgbm-model.txt"), text.replacen("objective=binary sigmoid:1", "objective=poisson", 1))
        .unwrap();
    let err = fails(compile_file(d, &d.join("lightgbm-model.txt")), 1);
    assert!(err.contains("objective `poisson` is not supported"), "{err}");
    std::fs::write(d.join("lightgbm-model.txt"), text.replacen("left_child=2 ", "left_child=99 ", 1)).unwrap();
    let err = fails(compile_file(d, &d.join("lightgbm-model.txt")), 1);
    assert!(err.contains("out of range"), "{err}");
    // a negative split feature used to saturate to feature 0 and be signed
    let neg = text.replacen("split_feature=1 ", "split_feature=-5 ", 1);
    assert_ne!(neg, text, "the sample model's first split_feature changed; update this test");
    std::fs::write(d.join("lightgbm-model.txt"), neg).unwrap();
    let err = fails(compile_file(d, &d.join("lightgbm-model.txt")), 1);
    assert!(err.contains("split 0: split_feature -5 is not a feature index"), "{err}");
}

#[test]
fn garbage_models_are_refused_without_output() {
    let dir = scratch();
    let d = dir.path();
    let err = fails(compile_file(d, &root().join("models/bad/garbage.onnx")), 1);
    assert!(err.contains("not a valid ONNX model"), "{err}");
    std::fs::write(d.join("empty.onnx"), b"").unwrap();
    let err = fails(compile_file(d, &d.join("empty.onnx")), 1);
    assert!(err.contains("empty.onnx"), "{err}");
    let err = fails(
        run(
            "neoc",
            d,
            &[
                "compile",
                "no-such-model:3",
                "--target",
                host_target(),
                "--unsigned",
                "--registry",
                root().join("models/registry").to_str().unwrap(),
            ],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("not in the local registry") && err.contains("fraud-mlp"), "{err}");
    let err = fails(
        run(
            "neoc",
            d,
            &[
                "compile",
                "fraud-mlp:7",
                "--target",
                host_target(),
                "--unsigned",
                "--registry",
                root().join("models/registry").to_str().unwrap(),
            ],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("has no tag `7`") && err.contains("tags: 1"), "{err}");
    assert!(!d.join("out.neo").exists());
}

/// A tar.gz with one hand-written header, so that names the `tar` crate
/// refuses to write (`../x`, `/x`) and links can be tested.
fn evil_tarball(path: &Path, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.as_old_mut().linkflag = [kind];
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(data);
    raw.resize(raw.len() + (512 - data.len() % 512) % 512 + 1024, 0);
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap();
}

#[test]
fn hostile_tarballs_are_refused_and_write_nothing_outside() {
    let dir = scratch();
    let d = dir.path();
    let onnx = std::fs::read(root().join("models/fraud-mlp/model.onnx")).unwrap();
    let victim = d.join("victim");
    std::fs::create_dir(&victim).unwrap();
    let abs = format!("{}/abs.onnx", victim.display());
    let cases: Vec<(&str, u8, &str, &str)> = vec![
        ("../escaped.onnx", b'0', "", "escapes the archive"),
        ("model/../../escaped.onnx", b'0', "", "escapes the archive"),
        (&abs, b'0', "", "escapes the archive"),
        ("model.onnx", b'2', "/etc/passwd", "is a link"),
        ("model.onnx", b'1', "../../victim/x", "is a link"),
    ];
    for (name, kind, link, want) in cases {
        let t = d.join("evil.tar.gz");
        evil_tarball(&t, name, kind, link, if kind == b'0' { &onnx } else { b"" });
        let err = fails(compile_file(d, &t), 1);
        assert!(err.contains(want), "{name}: {err}");
        assert!(!d.join("out.neo").exists());
    }
    assert!(std::fs::read_dir(&victim).unwrap().next().is_none(), "something was written outside the archive");
    assert!(!d.parent().unwrap().join("escaped.onnx").exists());
}

#[test]
fn gzip_bombs_are_refused() {
    let dir = scratch();
    let d = dir.path();
    let t = d.join("bomb.tar.gz");
    evil_tarball(&t, "model.onnx", b'0', "", &vec![0u8; 96 << 20]);
    assert!(std::fs::metadata(&t).unwrap().len() < 1 << 20);
    let err = fails(compile_file(d, &t), 1);
    assert!(err.contains("decompression bomb"), "{err}");
    assert!(!d.join("out.neo").exists());
}

#[test]
fn exit_codes_are_documented() {
    let dir = scratch();
    let h = ok(run("neorun", dir.path(), &["--help"], &[], None));
    assert!(h.contains("Exit status"), "{h}");
    let h = ok(run("neoc", dir.path(), &["--help"], &[], None));
    assert!(h.contains("Exit status"), "{h}");
    fails(run("neoc", dir.path(), &["compile"], &[], None), 2);
}

#[test]
fn nnef_models_compile_too() {
    // the NNEF archive inside a compiled bundle is itself a model neoc takes
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "image-cnn:1", host_target(), &[]);
    let mut ar = tar::Archive::new(std::fs::File::open(&b).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("model.nnef.tar") {
            e.unpack(d.join("cnn.nnef.tar")).unwrap();
        }
    }
    let out = ok(run(
        "neoc",
        d,
        &["compile", "cnn.nnef.tar", "--target", host_target(), "--key", "k.key", "-o", "n.neo", "--json"],
        &[],
        None,
    ));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["model"]["framework"], "nnef");
    assert_eq!(doc["bundles"][0]["verification"]["status"], "passed");
    let sample = root().join("models/image-cnn/sample.json");
    let out = ok(predict(d, "n.neo", sample.to_str().unwrap()));
    assert_close(&response_data(&out), &expected("image-cnn"), 1e-4);
    let err = fails(
        run(
            "neoc",
            d,
            &["compile", "cnn.nnef.tar", "--target", host_target(), "--unsigned", "--input", "image=1,3,8,8"],
            &[],
            None,
        ),
        1,
    );
    assert!(err.contains("not supported for NNEF"), "{err}");
}

#[test]
fn verification_beyond_tolerance_fails_unless_allowed() {
    let dir = scratch();
    let d = dir.path();
    let registry = root().join("models/registry");
    let reg = registry.to_str().unwrap();
    // the compiled CNN differs from onnxruntime's shipped outputs by ~6e-8: a zero tolerance trips
    let args = [
        "compile",
        "image-cnn:1",
        "--target",
        host_target(),
        "--key",
        "k.key",
        "-o",
        "m.neo",
        "--registry",
        reg,
        "--tolerance",
        "0",
        "--rtol",
        "0",
    ];
    let err = fails(run("neoc", d, &args, &[], None), 3);
    assert!(err.contains("verification failed") && err.contains("--allow-mismatch"), "{err}");
    assert!(!d.join("m.neo").exists());
    let mut allowed = args.to_vec();
    allowed.extend(["--allow-mismatch", "--json"]);
    let out = ok(run("neoc", d, &allowed, &[], None));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["bundles"][0]["verification"]["status"], "mismatch-allowed");
    assert!(doc["bundles"][0]["verification"]["independent"]["max_abs_error"].as_f64().unwrap() > 0.0);
}

#[test]
fn tflite_models_are_refused_by_name() {
    let dir = scratch();
    let d = dir.path();
    let mut flatbuffer = vec![0x1c, 0, 0, 0];
    flatbuffer.extend_from_slice(b"TFL3");
    flatbuffer.resize(256, 0);
    std::fs::write(d.join("model.tflite"), &flatbuffer).unwrap();
    let err = fails(compile_file(d, &d.join("model.tflite")), 4);
    assert!(err.contains("TFLite import is not supported") && err.contains("tf2onnx"), "{err}");
    assert!(!d.join("out.neo").exists());
}

#[test]
fn bench_profile_times_every_tract_operator_and_refuses_other_engines() {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "image-cnn:1", host_target(), &["--engine", "tract"]);
    let b = b.to_str().unwrap();
    let profile = |envs: &[(&str, &str)]| -> serde_json::Value {
        let args = ["bench", b, "--trusted-key", "k.pub", "--profile", "--iterations", "3", "--json"];
        serde_json::from_str(&ok(run("neorun", d, &args, envs, None))).unwrap()
    };
    let doc = profile(&[]);
    let nodes = doc["nodes"].as_array().unwrap();
    assert!(nodes.len() > 3, "{doc}");
    let has = |nodes: &[serde_json::Value], op: &str, info: &str| {
        nodes.iter().any(|n| n["op"] == op && n["info"].as_str().unwrap().contains(info))
    };
    // on x86-64 the convolutions run on neorun's gemm kernels, with their geometry
    if cfg!(target_arch = "x86_64") {
        assert!(has(nodes, "GemmConv", "Kernel shape"), "{doc}");
    }
    // NEORUN_KERNELS=tract keeps tract's: its matrix products carry its
    // description of the kernel it chose
    let stock = profile(&[("NEORUN_KERNELS", "tract")]);
    let stock_nodes = stock["nodes"].as_array().unwrap();
    assert!(has(stock_nodes, "OptMatMul", "mmm"), "{stock}");
    assert!(!stock_nodes.iter().any(|n| n["op"].as_str().unwrap().starts_with("Gemm")), "{stock}");
    let total = doc["total_us"].as_f64().unwrap();
    let by_op: f64 = doc["by_op"].as_array().unwrap().iter().map(|o| o["mean_us"].as_f64().unwrap()).sum();
    assert!(total > 0.0 && (by_op - total).abs() <= 1e-6 * total, "{total} vs {by_op}");
    // the trees engine has no tract operators to time: said, not faked
    let t = compile(d, "fraud-xgb:1", host_target(), &[]);
    let e =
        fails(run("neorun", d, &["bench", t.to_str().unwrap(), "--trusted-key", "k.pub", "--profile"], &[], None), 1);
    assert!(e.contains("--profile times tract's operators; this bundle runs trees"), "{e}");
}
