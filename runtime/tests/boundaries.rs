//! The runtime's dependency boundary, checked with `cargo tree`: what ships to
//! devices must not contain the compiler, the ONNX importer or protobuf.

use std::process::Command;

#[test]
fn runtime_links_no_compiler_onnx_or_protobuf() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "neoc-runtime", "-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"tract-nnef"), "sanity: tract-nnef should be there:\n{tree}");
    for forbidden in ["tract-onnx", "prost", "prost-derive", "neoc-compiler", "tract-hir"] {
        assert!(!crates.contains(&forbidden), "neoc-runtime depends on {forbidden}:\n{tree}");
    }
}

#[test]
fn embedded_tract_version_matches_the_lockfile() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let needle = format!("name = \"tract-core\"\nversion = \"{}\"", neoc_runtime::engine::TRACT_VERSION);
    assert!(lock.contains(&needle), "engine::TRACT_VERSION is out of date with Cargo.lock");
}

#[test]
fn neorun_binary_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_neorun")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("neorun "));
}
