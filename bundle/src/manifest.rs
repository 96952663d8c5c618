//! `manifest.json`: everything a device needs to decide about a bundle before
//! loading it, and the digest of every other file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::BundleError;

/// Value of [`Manifest::format`].
pub const FORMAT: &str = "neoc-bundle";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest inside the bundle.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the minisign signature of the manifest.
pub const SIGNATURE_NAME: &str = "manifest.json.minisig";
/// Largest manifest a reader accepts.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    pub format_version: u32,
    pub model: ModelInfo,
    pub target: TargetInfo,
    pub engine: EngineInfo,
    pub compiler: ToolInfo,
    /// Oldest `neorun` that can run this bundle (`MAJOR.MINOR.PATCH`).
    pub min_runtime_version: String,
    /// Build time, seconds since the epoch: `SOURCE_DATE_EPOCH` when set, else 0,
    /// so that identical inputs give identical bundles. Also the tar entries' mtime.
    pub created: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub verification: Verification,
    /// The file holding test vectors (inputs and expected outputs) for the
    /// device's health check, if any.
    pub test_vectors: Option<String>,
    /// Every file of the bundle but the manifest and its signature, in bundle order.
    pub files: Vec<FileEntry>,
    /// What an external backend compiled for the target's accelerator (a
    /// Neuron NEFF), or why nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_model: Option<AcceleratorModel>,
    /// A second engine's model of the same network (tract's NNEF next to an
    /// OpenVINO model), run only when the operator allows it and the primary
    /// engine cannot be loaded on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_engine: Option<EngineInfo>,
    /// How `engine` was chosen among the candidates, with their timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_selection: Option<EngineSelection>,
    /// For CUDA targets: which operators tract's CUDA runtime puts on the
    /// GPU and which it leaves on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_placement: Option<GpuPlacement>,
}

/// Where tract's CUDA runtime runs a model's operators: on the GPU, or on
/// the CPU with a copy between host and device on each side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuPlacement {
    /// How it was found: neoc's dry run of the translation on the build
    /// host, or neorun's reading of the model it prepared on a GPU.
    pub method: String,
    /// `translated`, or why the translation fails (on a GPU the bundle then
    /// loads only with `neorun --cpu-fallback`).
    pub status: String,
    /// Operators on the GPU.
    pub gpu_ops: usize,
    /// Operators left on the CPU, in model order.
    pub cpu_ops: Vec<PlacedOp>,
    /// Host-to-device and device-to-host copies.
    pub transfers: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacedOp {
    pub node: String,
    pub op: String,
}

/// The compile-time half of an inference recommender: every engine and
/// precision considered for the target, verified, and timed when the build
/// host could run the target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineSelection {
    /// `measured` (fastest verified candidate on the build host),
    /// `preference` (the target's documented order; the host cannot run the
    /// target) or `requested` (`--engine`).
    pub method: String,
    /// What the timings ran on (CPU model, threads, batch).
    pub host: String,
    pub threads: u32,
    pub candidates: Vec<EngineCandidate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineCandidate {
    /// `tract`, `openvino`.
    pub engine: String,
    /// `fp32`, `fp16`, `bf16`.
    pub precision: String,
    /// `chosen`, `fallback`, `slower`, `rejected: …`, `unavailable: …`.
    pub status: String,
    /// Median latency of one inference on the verification inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_us: Option<f64>,
    /// Interquartile range of those latencies: the noise an engine choice
    /// must rise above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_us: Option<f64>,
    /// Largest error against the reference, when verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorModel {
    /// `neff`
    pub format: String,
    /// The file in the bundle; `None` when the backend did not run.
    pub file: Option<String>,
    /// The backend and its version (`neuronx-cc`, its `--version`).
    pub backend: ToolInfo,
    /// The command line it ran with, file names relative to the bundle.
    pub command: Vec<String>,
    /// `compiled`, or why not (`not compiled: …; CPU bundle`).
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// `onnx`, `nnef`, …
    pub framework: String,
    /// What was given to `neoc compile` (a path, `NAME:VERSION`, …).
    pub source: String,
    /// sha256 of the model tarball or file as it was fetched.
    pub source_digest: String,
    /// The model file inside the source, which was compiled.
    pub source_file: String,
    /// The source's own text properties (ONNX `metadata_props` by their key,
    /// `doc_string`, …), carried here verbatim: the NNEF model cannot hold
    /// arbitrary text (an OCR model's character dictionary, an apostrophe).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Inputs of the source pinned to a value at compile time (`--input
    /// sr=16000:i64`): constants of the compiled model, no inputs of the bundle.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pinned_inputs: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub triple: String,
    pub arch: String,
    /// CPU features the bundle assumes; the runtime checks them at load.
    pub features: Vec<String>,
    /// `none`, `cuda` or `neuron`; the runtime checks it can drive it at load.
    pub accelerator: String,
    /// The accelerator's generation: `sm_86`, `inferentia2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_arch: Option<String>,
    /// Whether the bundle's model also runs on the CPU, for a host without
    /// the accelerator (used only when the runtime is told to).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cpu_fallback: bool,
    /// Float precision the model computes in (`fp32`, `fp16`); inputs and
    /// outputs keep the types of `inputs`/`outputs` whatever it is.
    #[serde(default = "fp32")]
    pub precision: String,
    /// Inference threads to use when the operator does not say (the
    /// device's cores); absent: as many as the host has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

fn fp32() -> String {
    "fp32".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine the runtime dispatches on (`tract`).
    pub name: String,
    pub version: String,
    /// The compiled model file and its format (`tract-nnef-tar`).
    pub model_file: String,
    pub model_format: String,
    /// Operator registries the engine needs besides its core (`tract_onnx`, …).
    pub registries: Vec<String>,
    /// Settings the engine is created with, fixed at compile time
    /// (onnxruntime's session options: `graph_optimization_level`,
    /// `inter_op_threads`, `memory_arena`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

/// A model input or output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// `f32`, `f64`, `i64`, `i32`, `i16`, `i8`, `u8`, `u16`, `u32`, `u64`, `bool`, `f16`.
    pub dtype: String,
    pub shape: Vec<Dim>,
    /// A float input that takes NaN and infinities on purpose (IsNaN, IsInf,
    /// masks of -inf): the model's own test data feeds them. Elsewhere a
    /// neural model's runtime refuses them (they would flow into every output).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_finite: bool,
}

/// A dimension: fixed, or a symbol (a batch size chosen per request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// Formats a shape as `[N,30]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// What the verify stage of the compiler measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// `passed`, or `mismatch-allowed` when built with `--allow-mismatch`.
    pub status: String,
    /// What the compiled model was compared with.
    pub reference: String,
    /// The machine the verification ran on (`x86_64`, …): when it is not the
    /// target's architecture, the target's own kernels were not exercised.
    pub host: String,
    /// Where the inputs came from: `test_data_set` (shipped with the model)
    /// or `seeded` (random, fixed seed).
    pub inputs: String,
    pub cases: usize,
    pub max_abs_error: f64,
    pub max_rel_error: f64,
    /// Tolerances: an element passes when |a-b| <= atol + rtol*|b|.
    pub atol: f64,
    pub rtol: f64,
    /// Comparison with expected outputs computed by another engine and shipped
    /// with the model (ONNX `test_data_set_*`), when there were any.
    pub independent: Option<IndependentCheck>,
    /// Comparison with another engine run by the compiler on the same inputs
    /// (`onnxruntime 1.31.1` on the source ONNX model), when it was present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independent_engine: Option<IndependentCheck>,
    /// The precision the compiled model computed in; against an fp32
    /// reference, the errors above are the cost of that precision.
    #[serde(default = "fp32")]
    pub precision: String,
    /// Anything that limited the check (e.g. fp16 emulated on this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndependentCheck {
    pub source: String,
    pub cases: usize,
    pub max_abs_error: f64,
    pub max_rel_error: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// The canonical bytes of this manifest (pretty JSON, fields in schema
    /// order, trailing newline): what is written and signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest: format, version, and file list sanity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, BundleError> {
        // Probe the format fields first so that a future format version gets a
        // clear message rather than a schema error.
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            format_version: Option<u32>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(format!("not JSON: {e}")))?;
        if probe.format.as_deref() != Some(FORMAT) {
            return Err(BundleError::Manifest(format!(
                "format is {:?}, expected \"{FORMAT}\"",
                probe.format.unwrap_or_default()
            )));
        }
        match probe.format_version {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(BundleError::Manifest(format!(
                    "bundle format version {v} is not supported by this build (it reads version {FORMAT_VERSION})\nhint: use a neorun as recent as the neoc that built the bundle"
                )))
            }
            None => return Err(BundleError::Manifest("format_version is missing".into())),
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
        m.check_files()?;
        Ok(m)
    }

    fn check_files(&self) -> Result<(), BundleError> {
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            check_entry_name(&f.path).map_err(BundleError::Manifest)?;
            if f.path == MANIFEST_NAME || f.path == SIGNATURE_NAME || !seen.insert(&f.path) {
                return Err(BundleError::Manifest(format!("file `{}` is listed twice", f.path)));
            }
            if !f.sha256.starts_with("sha256:") || f.sha256.len() != 71 {
                return Err(BundleError::Manifest(format!("file `{}` has a malformed digest", f.path)));
            }
        }
        for e in std::iter::once(&self.engine).chain(&self.fallback_engine) {
            if !seen.contains(&e.model_file) {
                return Err(BundleError::Manifest(format!(
                    "engine model file `{}` is not among the bundle's files",
                    e.model_file
                )));
            }
        }
        if let Some(tv) = &self.test_vectors {
            if !seen.contains(tv) {
                return Err(BundleError::Manifest(format!("test vectors `{tv}` are not among the bundle's files")));
            }
        }
        Ok(())
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Names inside a bundle: plain relative names of at most 100 bytes (one ustar
/// name field), `[A-Za-z0-9._-]` and `/`, no `..`, no empty component.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    let ok_parts = name.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if name.is_empty() || name.len() > 100 || !ok_chars || !ok_parts {
        return Err(format!("invalid file name {name:?} in bundle"));
    }
    Ok(())
}

/// Compares `MAJOR.MINOR.PATCH` versions; `None` when either does not parse.
pub fn version_at_least(have: &str, need: &str) -> Option<bool> {
    fn parse(v: &str) -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    }
    Some(parse(have)? >= parse(need)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_at_least("0.10.0", "0.9.3"), Some(true));
        assert_eq!(version_at_least("0.1.0", "0.2.0"), Some(false));
        assert_eq!(version_at_least("1.0.0-rc1", "1.0.0"), Some(true));
        assert_eq!(version_at_least("x", "1.0.0"), None);
    }

    #[test]
    fn entry_names_are_plain() {
        assert!(check_entry_name("model.nnef.tar").is_ok());
        assert!(check_entry_name("vectors/a.json").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b", "sp ace", &"x".repeat(101)] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
    }
}
