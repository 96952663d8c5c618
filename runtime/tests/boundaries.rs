//! The runtime library's dependency boundary, checked with `cargo tree`:
//! what `neoc` links to verify bundles and `neorun` builds on must contain
//! neither the compiler, the ONNX importer, protobuf, nor any HTTP server,
//! CLI parser or async network runtime (those belong to `neorun`).

use std::process::Command;

/// The crates `package` depends on (normal edges), by name.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    tree.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

#[test]
fn runtime_links_no_compiler_onnx_protobuf_or_server() {
    let crates = dependencies("neoc-runtime");
    assert!(crates.iter().any(|c| c == "tract-nnef"), "sanity: tract-nnef should be there:\n{crates:?}");
    for forbidden in [
        "tract-onnx",
        "prost",
        "prost-derive",
        "neoc-compiler",
        "tract-hir",
        "axum",
        "hyper",
        "tokio",
        "tower",
        "clap",
        "tracing-subscriber",
    ] {
        assert!(!crates.iter().any(|c| c == forbidden), "neoc-runtime depends on {forbidden}:\n{crates:?}");
    }
}

#[test]
fn embedded_tract_version_matches_the_lockfile() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let needle = format!("name = \"tract-core\"\nversion = \"{}\"", neoc_runtime::engine::TRACT_VERSION);
    assert!(lock.contains(&needle), "engine::TRACT_VERSION is out of date with Cargo.lock");
}
