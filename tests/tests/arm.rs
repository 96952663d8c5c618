//! The aarch64 `neorun`, cross-built with Debian's toolchain, run under
//! qemu-aarch64 on bundles compiled on this x86 host for `rasp4b`.
//! Emulation checks correctness only; it says nothing about ARM speed.
//!
//! `.ci/run` builds the binary (cargo build --release --target
//! aarch64-unknown-linux-gnu -p neoc-runtime); NEOC_AARCH64_NEORUN overrides
//! its path.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use neoc_e2e::*;

fn arm_neorun() -> PathBuf {
    let p = std::env::var_os("NEOC_AARCH64_NEORUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/aarch64-unknown-linux-gnu/release/neorun"));
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build --release --target aarch64-unknown-linux-gnu -p neoc-runtime` \
         (needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user and the rustup target; .ci/run installs them)",
        p.display()
    );
    assert_fresh(&p);
    p
}

fn qemu(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new("qemu-aarch64")
        .current_dir(cwd)
        .args(["-L", "/usr/aarch64-linux-gnu", arm_neorun().to_str().unwrap()])
        .args(args)
        .output()
        .expect("qemu-aarch64 must be installed (apt-get install qemu-user)")
}

#[test]
fn aarch64_neorun_predicts_rasp4b_bundles_under_qemu() {
    if cfg!(target_arch = "aarch64") {
        return; // on an ARM host the native tests already cover this
    }
    let dir = scratch();
    let d = dir.path();
    for (model, sample, tol, idx) in [
        ("fraud-xgb:1", "models/fraud-xgb/sample.csv", 1e-6, 1),
        ("fraud-mlp:1", "models/fraud-mlp/sample.csv", 1e-5, 0),
        ("image-cnn:1", "models/image-cnn/sample.json", 1e-4, 0),
    ] {
        let b = compile(d, model, "rasp4b", &[]);
        let out = qemu(
            &[
                "predict",
                b.to_str().unwrap(),
                "--trusted-key",
                "k.pub",
                "--input",
                root().join(sample).to_str().unwrap(),
            ],
            d,
        );
        assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<f64> =
            doc["outputs"][idx]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&got, &expected(model.split(':').next().unwrap()), tol);
    }
    // and it refuses an x86 bundle, saying both sides
    let b = compile(d, "fraud-xgb:1", "ml_c5", &[]);
    let out = qemu(&["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], d);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compiled for ml_c5 (x86_64), this host is aarch64"), "{err}");
}

#[test]
fn aarch64_neorun_serves_under_qemu_to_a_host_client() {
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", "rasp4b", &[]);
    let mut child = Command::new("qemu-aarch64")
        .current_dir(d)
        .args([
            "-L",
            "/usr/aarch64-linux-gnu",
            arm_neorun().to_str().unwrap(),
            "serve",
            b.to_str().unwrap(),
            "--trusted-key",
            "k.pub",
            "--port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let csv = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    let r = ureq::post(&format!("{base}/invocations")).set("Content-Type", "text/csv").send_string(&csv);
    let _ = child.kill();
    let _ = child.wait();
    let body = r.unwrap().into_string().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<f64> = doc["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&got, &expected("fraud-xgb"), 1e-6);
}
