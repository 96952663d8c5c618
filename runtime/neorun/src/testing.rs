//! Test support: a small trees model built in process (no bundle file, no
//! compiler): one tree over two features, `x0 < 0.5` → margin -1, else +1,
//! binary logistic.

use neoc_runtime::{Model, OpenOptions};
use serde_json::json;

fn forest() -> Vec<u8> {
    json!({
        "format": "neoc-trees", "version": 1, "num_features": 2, "num_groups": 1, "base_margin": [0.0],
        "post_transform": "binary_sigmoid", "task": {"kind": "classifier", "labels": [0, 1]},
        "roots": [0], "feature": [0, 1, 1], "threshold": [0.5, 0.0, 0.0], "left": [1, 0, 1],
        "flags": [0, 128, 128], "leaf_group": [0, 0], "leaf_value": [-1.0, 1.0]
    })
    .to_string()
    .into_bytes()
}

/// The tiny model at `version`.
pub fn tiny_model(version: &str) -> Model {
    let arch = if cfg!(target_arch = "x86_64") { "x86_64" } else { "aarch64" };
    let manifest = serde_json::from_value(json!({
        "format": "neoc-bundle", "format_version": 1,
        "model": {"name": "tiny", "version": version, "framework": "xgboost", "source": "test", "source_digest": "", "source_file": ""},
        "target": {"name": arch, "triple": "", "arch": arch, "features": [], "accelerator": "none"},
        "engine": {"name": "trees", "version": "1", "model_file": "model.trees.json", "model_format": "neoc-trees-json", "registries": []},
        "compiler": {"name": "test", "version": "0"},
        "min_runtime_version": "0.1.0", "created": 0,
        "inputs": [{"name": "features", "dtype": "f32", "shape": ["N", 2]}],
        "outputs": [{"name": "label", "dtype": "i64", "shape": ["N"]}, {"name": "probabilities", "dtype": "f32", "shape": ["N", 2]}],
        "verification": {"status": "passed", "reference": "", "host": "", "inputs": "", "cases": 0,
                         "max_abs_error": 0.0, "max_rel_error": 0.0, "atol": 0.0, "rtol": 0.0, "independent": null},
        "test_vectors": null, "files": []
    }))
    .unwrap();
    Model::from_parts(manifest, &forest(), None, &OpenOptions::default()).unwrap()
}
