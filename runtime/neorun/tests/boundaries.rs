//! The device binary's dependency boundary, checked with `cargo tree`:
//! `neorun` must not carry the compiler, the ONNX importer or protobuf.

use std::process::Command;

#[test]
fn neorun_links_no_compiler_onnx_or_protobuf() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "neorun", "-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for needed in ["neoc-runtime", "axum", "prometheus-client"] {
        assert!(crates.contains(&needed), "sanity: {needed} should be there:\n{tree}");
    }
    for forbidden in ["tract-onnx", "tract-hir", "prost", "prost-derive", "protobuf", "neoc-compiler", "oci-client"] {
        assert!(!crates.contains(&forbidden), "neorun depends on {forbidden}:\n{tree}");
    }
}

#[test]
fn neorun_binary_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_neorun")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("neorun "));
}
