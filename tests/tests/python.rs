//! The Python package (`python/`, PyO3): its pytest suite against bundles
//! compiled here, with the refusal messages the `neorun` binary prints for
//! the same bad bundles, so that Python's exceptions can be compared with
//! them word for word. The wheel is built and installed into the venv by
//! `.ci/run` (`maturin build`); this fails, saying how to rebuild, when the
//! installed module is older than its sources.

use std::path::Path;
use std::process::Command;

use neoc_e2e::*;

/// The installed extension module, checked to be newer than python/src.
fn installed_module() -> std::path::PathBuf {
    let o = Command::new(venv_python()).args(["-c", "import neorun; print(neorun.__file__)"]).output().unwrap();
    assert!(
        o.status.success(),
        "the neorun Python package is not installed in the venv: .venv/bin/maturin build --release -m python/Cargo.toml -i .venv/bin/python && .venv/bin/pip install --force-reinstall --no-deps target/wheels/neorun-*.whl\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let so = std::path::PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
    let built = std::fs::metadata(&so).unwrap().modified().unwrap();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for dir in ["python/src", "runtime/src", "bundle/src"] {
        for e in walk(&root().join(dir)) {
            newest = newest.max(std::fs::metadata(&e).unwrap().modified().unwrap());
        }
    }
    assert!(built >= newest, "{} is older than its sources: rebuild the wheel (see .ci/run)", so.display());
    so
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What `neorun check` says after "bundle refused: ".
fn refusal(d: &Path, bundle: &str, key: &str) -> String {
    let o = run("neorun", d, &["check", bundle, "--trusted-key", key], &[], None);
    let e = fails(o, 3);
    let at = e.find("error: bundle refused: ").unwrap_or_else(|| panic!("{e}"));
    e[at + "error: bundle refused: ".len()..].trim_end().to_string()
}

#[test]
fn the_python_package_passes_its_tests() {
    let so = installed_module();
    let dir = scratch();
    let d = dir.path();
    for m in ["fraud-xgb:1", "fraud-mlp:1"] {
        let b = compile(d, m, host_target(), &[]);
        std::fs::rename(&b, d.join(format!("{}.neo", m.split(':').next().unwrap()))).unwrap();
    }
    let registry = root().join("models/registry");
    let args = ["compile", "fraud-xgb:1", "--target", host_target(), "--unsigned", "-o", "unsigned.neo", "--registry"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(registry.to_str().unwrap());
    ok(run("neoc", d, &args, &[], None));
    ok(run("neoc", d, &["keygen", "-o", "other"], &[], None));
    let mut raw = std::fs::read(d.join("fraud-xgb.neo")).unwrap();
    let n = raw.len();
    raw[n / 2] ^= 1;
    std::fs::write(d.join("tampered.neo"), raw).unwrap();
    let said = serde_json::json!({
        "tampered": refusal(d, "tampered.neo", "k.pub"),
        "other_key": refusal(d, "fraud-xgb.neo", "other.pub"),
        "unsigned": refusal(d, "unsigned.neo", "k.pub"),
    });
    std::fs::write(d.join("refusals.json"), said.to_string()).unwrap();
    let o = Command::new(venv_python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"])
        .arg(d.join("pytest.xml"))
        .arg(root().join("python/tests"))
        .env("NEORUN_TEST_DIR", d)
        .env("NEORUN_ROOT", root())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "pytest failed ({}):\n{out}\n{}", so.display(), String::from_utf8_lossy(&o.stderr));
    // every test ran: none skipped or deselected
    let xml = std::fs::read_to_string(d.join("pytest.xml")).unwrap();
    assert!(xml.contains("skipped=\"0\"") && xml.contains("failures=\"0\"") && xml.contains("errors=\"0\""), "{xml}");
    assert!(!xml.contains("tests=\"0\""), "{xml}");
}
