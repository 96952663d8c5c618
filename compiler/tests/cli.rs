//! The `neoc` binary's own smoke tests (the end-to-end suite lives in tests/).

use std::process::Command;

#[test]
fn targets_are_listed() {
    let out = Command::new(env!("CARGO_BIN_EXE_neoc")).arg("targets").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for t in ["x86_64-avx512", "ml_c5", "ml_m6g", "rasp4b", "jetson_orin", "armv7"] {
        assert!(text.contains(t), "{t} missing:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_neoc")).args(["compile", "m.onnx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
}
