//! The device binary's dependency boundary, checked with `cargo tree`:
//! `neorun` must not carry the compiler, the ONNX importer or protobuf; the
//! registry client it may carry (feature `registry`, for `oci://` model
//! URLs) must not carry tract, and without the feature there is none.

use std::process::Command;

fn cargo_tree(args: &[&str]) -> (String, Vec<String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-e", "normal", "--prefix", "none", "--offline"])
        .args(args)
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates = tree.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    (tree, crates)
}

#[test]
fn neorun_links_no_compiler_onnx_or_protobuf() {
    let (tree, crates) = cargo_tree(&["-p", "neorun"]);
    for needed in ["neoc-runtime", "axum", "prometheus-client", "neoc-registry"] {
        assert!(crates.iter().any(|c| c == needed), "sanity: {needed} should be there:\n{tree}");
    }
    for forbidden in ["tract-onnx", "tract-hir", "prost", "prost-derive", "protobuf", "neoc-compiler"] {
        assert!(!crates.iter().any(|c| c == forbidden), "neorun depends on {forbidden}:\n{tree}");
    }
    // the registry client knows nothing of models
    let (tree, crates) = cargo_tree(&["-p", "neoc-registry"]);
    assert!(!crates.iter().any(|c| c.starts_with("tract")), "neoc-registry depends on tract:\n{tree}");
    // and the ARM builds (no `registry` feature) carry no registry client
    let (tree, crates) = cargo_tree(&["-p", "neorun", "--no-default-features", "--features", "neuron"]);
    for forbidden in ["neoc-registry", "oci-client", "native-tls", "openssl"] {
        assert!(!crates.iter().any(|c| c == forbidden), "neorun without `registry` depends on {forbidden}:\n{tree}");
    }
}

#[test]
fn neorun_binary_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_neorun")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("neorun "));
}
