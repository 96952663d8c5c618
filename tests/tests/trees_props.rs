//! Property test of the trees engine against the real libraries: random
//! XGBoost, LightGBM and ONNX-ML (scikit-learn, onnxmltools) ensembles with
//! random sizes, depths, objectives, missing values and infinities are trained
//! in Python (tests/trees/gen_cases.py), compiled with `neoc` and run with
//! `neorun`; every output must equal the source engine's within 1e-6.
//!
//! Needs the Python venv from models/requirements.txt (`.venv/`, or
//! `NEOC_VENV`), which `.ci/run` creates.

use neoc_e2e::*;

fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("NEOC_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| root().join(".venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} not found: this test needs the Python venv with xgboost, lightgbm, onnxruntime (run .ci/run, or: python3 -m venv .venv && .venv/bin/pip install -r models/requirements.txt)",
        py.display()
    );
    py
}

#[test]
fn random_ensembles_match_their_source_engines() {
    let seed = std::env::var("NEOC_PROP_SEED").unwrap_or_else(|_| "20261124".into());
    let count = std::env::var("NEOC_PROP_CASES").unwrap_or_else(|_| "24".into());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gen = std::process::Command::new(python())
        .args([root().join("tests/trees/gen_cases.py").to_str().unwrap(), d.to_str().unwrap(), &seed, &count])
        .output()
        .unwrap();
    assert!(gen.status.success(), "gen_cases.py failed: {}", String::from_utf8_lossy(&gen.stderr));
    let mut cases: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert_eq!(cases.len().to_string(), count);
    for case in cases {
        let model = ["xgboost-model.json", "xgboost-model.ubj", "lightgbm-model.txt", "model.onnx"]
            .iter()
            .map(|m| case.join(m))
            .find(|p| p.exists())
            .unwrap();
        let out = run(
            "neoc",
            &case,
            &["compile", model.to_str().unwrap(), "--target", "host", "--unsigned", "-o", "b.neo", "--json"],
            &[],
            None,
        );
        let summary = ok(out);
        let doc: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(doc["bundles"][0]["verification"]["status"], "passed", "{}", case.display());
        let out =
            ok(run("neorun", &case, &["predict", "b.neo", "--allow-unsigned", "--input", "inputs.csv"], &[], None));
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.join("expected.json")).unwrap()).unwrap();
        for (name, values) in want["outputs"].as_object().unwrap() {
            let idx = if name == "probabilities" { 1 } else { 0 };
            let g: Vec<f64> =
                got["outputs"][idx]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let w: Vec<f64> = values.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(g.len(), w.len(), "{}: {name} length", case.display());
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                let tol = 1e-6 * b.abs().max(1.0);
                assert!(
                    (a - b).abs() <= tol,
                    "{} ({}): {name}[{i}] = {a}, source engine says {b}",
                    case.display(),
                    want["source"]
                );
            }
            if name == "probabilities" {
                // labels follow the probabilities
                let labels: Vec<i64> =
                    got["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                let width = g.len() / labels.len();
                for (r, l) in labels.iter().enumerate() {
                    let row = &g[r * width..(r + 1) * width];
                    let best = (0..width).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                    assert_eq!(*l as usize, best, "{} row {r}", case.display());
                }
            }
        }
    }
}
