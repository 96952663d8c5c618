//! A verified, loaded bundle: `Model::open` runs the checks in their
//! documented order, each a small named function with its own error, before
//! the model is parsed; then the model predicts, runs and health-checks.

use std::path::Path;

use anyhow::bail;
use neoc_bundle::container::{self, Signer, Trust, VerifiedBundle};
use neoc_bundle::manifest::{shape_string, version_at_least, Dim, Manifest};
use neoc_bundle::BundleError;
use neoc_targets::{Arch, Host, Incompatible};
use tract_core::prelude::*;

use crate::codec::{BadRequest, Batch};
use crate::engine::{default_threads, Engine, LoadParams, REGISTRIES};
use crate::options::OpenOptions;
use crate::tensors::{compare, TestVectors, TEST_VECTOR_DATA};

/// This runtime's version, compared with bundles' `min_runtime_version`.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a bundle was not loaded. The variants say whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file, its signature or the trust set-up.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// This host cannot run the bundle's target.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
    #[error("bundle needs neorun {need} or newer; this is neorun {have}\nhint: upgrade neorun on this device")]
    RuntimeTooOld { need: String, have: String },
    #[error("bundle uses engine `{0}`, which this neorun does not have (it has: tract, trees{more})", more = if crate::engine::OPENVINO_BUILD { ", openvino" } else { "" })]
    UnknownEngine(String),
    #[error("bundle's model could not be loaded: {0}")]
    Engine(String),
    /// The bundle's accelerator is not one this neorun can drive.
    #[error("{0}")]
    Accelerator(String),
}

/// Where a bundle's model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    /// On the GPU: through tract's CUDA runtime (`--features cuda` builds),
    /// or onnxruntime's CUDA execution provider (an onnxruntime bundle for a
    /// CUDA target, on builds with the onnxruntime engine).
    Cuda,
    /// On an Inferentia NeuronCore through libnrt (`--features neuron`).
    Neuron,
    /// An accelerator bundle's CPU model, because the operator allowed it.
    CpuFallback,
}

/// Decides where the bundle runs: on its accelerator when this neorun can
/// drive it, else on the CPU if the operator allowed the fallback and the
/// bundle carries a CPU model, else an error saying which.
pub fn check_placement(m: &Manifest, allow_cpu_fallback: bool) -> Result<Placement, LoadError> {
    let what = match m.target.accelerator.as_str() {
        "none" => return Ok(Placement::Cpu),
        "cuda" if crate::engine::CUDA_BUILD && m.engine.name != crate::engine::ORT_ENGINE => {
            return Ok(Placement::Cuda)
        }
        "cuda" if crate::engine::ORT_BUILD && m.engine.name == crate::engine::ORT_ENGINE => return Ok(Placement::Cuda),
        "cuda" => "an NVIDIA GPU (CUDA)",
        "neuron" if crate::engine::NEURON_BUILD => return Ok(Placement::Neuron),
        "neuron" => "AWS Neuron (Inferentia)",
        other => {
            return Err(LoadError::Accelerator(format!(
                "bundle targets accelerator `{other}`, which this neorun does not know\nhint: upgrade neorun"
            )))
        }
    };
    let arch = m.target.accelerator_arch.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
    if allow_cpu_fallback && m.target.cpu_fallback {
        return Ok(Placement::CpuFallback);
    }
    let hint = if m.target.cpu_fallback {
        "hint: pass --cpu-fallback to run the bundle's CPU model on this host instead"
    } else {
        "hint: the bundle carries no CPU model; compile the model for a CPU target"
    };
    let build = if m.target.accelerator == "cuda" && m.engine.name == crate::engine::ORT_ENGINE {
        "this neorun was built without the onnxruntime engine, which runs this bundle on the GPU (cargo build --features onnxruntime)"
    } else if m.target.accelerator == "cuda" {
        "this neorun was built without CUDA support (cargo build --features cuda)"
    } else {
        "this neorun was built without the Neuron engine (cargo build --features neuron)"
    };
    Err(LoadError::Accelerator(format!(
        "bundle was compiled for {} to run on {what}{arch}; {build}\n{hint}",
        m.target.name
    )))
}

/// A bundle that passed every check `Model::open` makes before loading.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    pub signer: Signer,
    /// sha256 of the bundle file.
    pub digest: String,
}

/// A bundle that passed every check, with its model ready to run.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    pub signer: Signer,
    /// sha256 of the bundle file.
    pub digest: String,
    vectors: Vectors,
    /// Where the model runs.
    pub placement: Placement,
    /// The engine running the model (`openvino`, or `tract` when the
    /// fallback was taken), and its precision.
    pub running: String,
    engine: Engine,
}

fn threads_for(m: &Manifest) -> usize {
    default_threads(m.target.threads)
}

/// Loads a Neuron bundle's NEFF through libnrt.
#[cfg(feature = "neuron")]
fn neuron_engine(bundle: &VerifiedBundle) -> Result<crate::engine::neuron::NeuronEngine, String> {
    use crate::engine::neuron::{Declared, NeuronEngine};
    let m = &bundle.manifest;
    let file = m
        .accelerator_model
        .as_ref()
        .and_then(|a| a.file.as_deref())
        .ok_or("the bundle targets AWS Neuron but carries no NEFF (its manifest names none)")?;
    let neff = bundle.file(file).ok_or_else(|| format!("the bundle's NEFF `{file}` is missing"))?;
    let ins: Vec<Declared> = m.inputs.iter().map(|t| Declared { name: &t.name, dtype: &t.dtype }).collect();
    let outs: Vec<Declared> = m.outputs.iter().map(|t| Declared { name: &t.name, dtype: &t.dtype }).collect();
    crate::guard::guarded(|| NeuronEngine::new(neff, &ins, &outs))?.map_err(|e| format!("{e:#}"))
}

fn load_params<'a>(m: &'a Manifest, options: &OpenOptions, precision: Option<&'a str>) -> LoadParams<'a> {
    LoadParams {
        precision: precision.unwrap_or(&m.target.precision),
        kernels: options.kernels,
        threads: options.threads,
        default_threads: threads_for(m),
    }
}

/// The signature against the trusted keys, every file's digest, and the
/// container's canonical form: nothing else is read before these pass.
fn check_container(path: &Path, options: &OpenOptions) -> Result<VerifiedBundle, LoadError> {
    let trust = if options.allow_unsigned {
        Trust::KeysOrUnsigned(options.trusted_keys.clone())
    } else {
        Trust::Keys(options.trusted_keys.clone())
    };
    Ok(container::read(path, &trust)?)
}

/// This host can run the bundle's target: its architecture and CPU features.
fn check_target(m: &Manifest) -> Result<(), LoadError> {
    let arch = Arch::parse(&m.target.arch).ok_or_else(|| {
        BundleError::Manifest(format!("unknown architecture `{}` in target {}", m.target.arch, m.target.name))
    })?;
    Ok(Host::detect().check(&m.target.name, arch, &m.target.features)?)
}

/// This neorun is recent enough for the bundle.
fn check_runtime_version(m: &Manifest) -> Result<(), LoadError> {
    match version_at_least(RUNTIME_VERSION, &m.min_runtime_version) {
        Some(true) => Ok(()),
        Some(false) => {
            Err(LoadError::RuntimeTooOld { need: m.min_runtime_version.clone(), have: RUNTIME_VERSION.into() })
        }
        None => Err(BundleError::Manifest(format!("bad min_runtime_version `{}`", m.min_runtime_version)).into()),
    }
}

/// Every operator registry the model needs is built in.
fn check_registries(m: &Manifest) -> Result<(), LoadError> {
    match m.engine.registries.iter().find(|r| !REGISTRIES.contains(&r.as_str())) {
        Some(r) => Err(LoadError::Engine(format!("operator registry `{r}` is not built into this neorun"))),
        None => Ok(()),
    }
}

/// A bundle's test vectors: given parsed (the compiler's verify stage), or
/// the verified bytes, parsed only when a self-test, `check` or `bench`
/// asks for them (`predict` and a server's requests never pay for them).
#[derive(Debug)]
enum Vectors {
    None,
    Parsed(TestVectors),
    /// The index as named by the manifest, and `test_vectors.bin` if the bundle has one.
    Stored {
        name: String,
        index: Vec<u8>,
        data: Option<Vec<u8>>,
    },
}

fn stored_vectors(bundle: &VerifiedBundle) -> Result<Vectors, LoadError> {
    let Some(name) = &bundle.manifest.test_vectors else { return Ok(Vectors::None) };
    let bytes = bundle.file(name).ok_or_else(|| BundleError::Manifest(format!("test vectors `{name}` are missing")))?;
    let data = bundle.file(TEST_VECTOR_DATA).map(<[u8]>::to_vec);
    Ok(Vectors::Stored { name: name.clone(), index: bytes.to_vec(), data })
}

/// Loads the model in the engine its placement calls for, taking the
/// fallbacks the operator allowed; returns the engine, where it runs and
/// what runs it.
fn load_engine(
    bundle: &VerifiedBundle,
    placement: Placement,
    options: &OpenOptions,
) -> Result<(Engine, Placement, String), LoadError> {
    let m = &bundle.manifest;
    let model_bytes = bundle
        .file(&m.engine.model_file)
        .ok_or_else(|| BundleError::Manifest(format!("model file `{}` is missing", m.engine.model_file)))?;
    let params = load_params(m, options, None);
    #[allow(unused_mut)]
    let mut running = format!("{} ({})", m.engine.name, m.target.precision);
    let cpu = || Engine::load(&m.engine.name, &m.engine.model_format, params, model_bytes);
    let loaded = match placement {
        #[cfg(feature = "cuda")]
        Placement::Cuda if m.engine.name == crate::engine::ENGINE_NAME => {
            match crate::engine::TractEngine::cuda_from_nnef_tar(model_bytes) {
                Ok(e) => (Engine::Tract(e), Placement::Cuda),
                Err(e) if options.allow_cpu_fallback && m.target.cpu_fallback => {
                    tracing::warn!("no usable CUDA device ({e:#}); running the bundle's CPU model");
                    (cpu()?, Placement::CpuFallback)
                }
                Err(e) => {
                    return Err(LoadError::Accelerator(format!(
                        "bundle was compiled for {} (CUDA), and the GPU cannot run it here: {e:#}\nhint: pass --cpu-fallback to run the bundle's CPU model instead",
                        m.target.name
                    )))
                }
            }
        }
        #[cfg(feature = "neuron")]
        Placement::Neuron => match neuron_engine(bundle) {
            Ok(e) => {
                running = format!(
                    "neuron (NEFF on {}, libnrt {})",
                    m.target.accelerator_arch.as_deref().unwrap_or("Inferentia"),
                    e.runtime_version()
                );
                (Engine::Neuron(e), Placement::Neuron)
            }
            Err(e) if options.allow_cpu_fallback && m.target.cpu_fallback => {
                tracing::warn!("the Neuron runtime cannot run this bundle here ({e}); running the bundle's CPU model");
                (cpu()?, Placement::CpuFallback)
            }
            Err(e) => {
                let hint = if m.target.cpu_fallback {
                    "\nhint: or pass --cpu-fallback to run the bundle's CPU model on this host instead"
                } else {
                    ""
                };
                return Err(LoadError::Accelerator(format!(
                    "bundle was compiled for {} (AWS Neuron), and the Neuron runtime cannot run it here: {e}{hint}",
                    m.target.name
                )));
            }
        },
        // onnxruntime's CUDA execution provider; its CPU fallback is the same
        // ONNX model on the CPU provider
        #[cfg(feature = "onnxruntime")]
        Placement::Cuda if m.engine.name == crate::engine::ORT_ENGINE => {
            match Engine::load_info(&m.engine, params, model_bytes) {
                Ok(e) => {
                    running = format!("{} ({}, CUDA execution provider)", m.engine.name, m.target.precision);
                    (e, Placement::Cuda)
                }
                Err(LoadError::Engine(e)) if options.allow_cpu_fallback && m.target.cpu_fallback => {
                    tracing::warn!("onnxruntime cannot run this bundle on the GPU here ({e}); running it on the CPU");
                    let mut cpu_info = m.engine.clone();
                    cpu_info.options.remove("execution_provider");
                    running = format!("{} ({}, CPU execution provider, fallback for CUDA)", m.engine.name, m.target.precision);
                    (Engine::load_info(&cpu_info, params, model_bytes)?, Placement::CpuFallback)
                }
                Err(LoadError::Engine(e)) => {
                    return Err(LoadError::Accelerator(format!(
                        "bundle was compiled for {} (CUDA, onnxruntime), and onnxruntime cannot run it on the GPU here: {e}",
                        m.target.name
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        p => match Engine::load_info(&m.engine, params, model_bytes) {
            Ok(e) => (e, p),
            Err(LoadError::Engine(why)) if m.fallback_engine.is_some() => {
                let fb = m.fallback_engine.as_ref().expect("checked");
                if !options.allow_engine_fallback {
                    return Err(LoadError::Engine(format!(
                        "{why}\nhint: or pass --engine-fallback to run the bundle's {} model instead (verified at compile time, slower)",
                        fb.name
                    )));
                }
                tracing::warn!("{} cannot run here ({why}); running the bundle's {} model", m.engine.name, fb.name);
                let bytes = bundle
                    .file(&fb.model_file)
                    .ok_or_else(|| BundleError::Manifest(format!("fallback model `{}` is missing", fb.model_file)))?;
                running = format!("{} (fp32, fallback for {})", fb.name, m.engine.name);
                (Engine::load_info(fb, load_params(m, options, Some("fp32")), bytes)?, p)
            }
            Err(e) => return Err(e),
        },
    };
    Ok((loaded.0, loaded.1, running))
}

impl Model {
    /// Opens a bundle, checking in this order before the model is parsed:
    /// signature, file digests and canonical container (`check_container`),
    /// target vs this host (`check_target`), accelerator (`check_placement`),
    /// runtime version (`check_runtime_version`), operator registries
    /// (`check_registries`); then the engine loads the model (`load_engine`).
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Model, LoadError> {
        let bundle = check_container(path, options)?;
        let m = &bundle.manifest;
        check_target(m)?;
        let placement = check_placement(m, options.allow_cpu_fallback)?;
        check_runtime_version(m)?;
        check_registries(m)?;
        let (engine, placement, running) = load_engine(&bundle, placement, options)?;
        let vectors = stored_vectors(&bundle)?;
        Ok(Model {
            manifest: bundle.manifest,
            signer: bundle.signer,
            digest: bundle.digest,
            vectors,
            engine,
            placement,
            running,
        })
    }

    /// Runs `open`'s checks (container, target, placement, runtime version,
    /// registries) without loading the model: what a control plane needs to
    /// refuse a bundle at once (`CreateModel`) before an endpoint loads it.
    /// Returns the verified manifest, its signer and the bundle's digest.
    pub fn verify(path: &Path, options: &OpenOptions) -> Result<Verified, LoadError> {
        let bundle = check_container(path, options)?;
        let m = &bundle.manifest;
        check_target(m)?;
        check_placement(m, options.allow_cpu_fallback)?;
        check_runtime_version(m)?;
        check_registries(m)?;
        Ok(Verified { manifest: bundle.manifest, signer: bundle.signer, digest: bundle.digest })
    }

    /// Builds a model from parts already verified (used by the compiler's
    /// verify stage, which runs exactly what it is about to package, loaded
    /// as `open` loads it).
    pub fn from_parts(
        manifest: Manifest,
        model_file: &[u8],
        test_vectors: Option<TestVectors>,
        options: &OpenOptions,
    ) -> Result<Model, LoadError> {
        let engine = Engine::load_info(&manifest.engine, load_params(&manifest, options, None), model_file)?;
        Ok(Model {
            running: format!("{} ({})", manifest.engine.name, manifest.target.precision),
            manifest,
            signer: Signer::Unsigned,
            digest: String::new(),
            vectors: test_vectors.map_or(Vectors::None, Vectors::Parsed),
            engine,
            placement: Placement::Cpu,
        })
    }

    /// Where tract's CUDA runtime put the model's operators, read from the
    /// model it prepared on this GPU; `None` unless the model runs on one.
    pub fn gpu_placement(&self) -> Option<neoc_bundle::manifest::GpuPlacement> {
        match (&self.engine, &self.placement) {
            #[cfg(feature = "cuda")]
            (Engine::Tract(e), Placement::Cuda) => e.prepared_model().map(|m| {
                crate::engine::placement::read(m, "read from the model tract's CUDA runtime prepared on this GPU")
            }),
            _ => None,
        }
    }

    /// The threads to use when the operator gave none: the bundle's
    /// target's default (the device's cores), at most this host's CPUs.
    pub fn default_threads(&self) -> usize {
        threads_for(&self.manifest)
    }

    /// Threads inside one run from now on (tract's matrix products, the
    /// trees engine's row split from 1024 rows, OpenVINO's streams); this
    /// model's only, never another's.
    pub fn set_threads(&mut self, threads: usize) {
        self.engine.set_threads(threads);
    }

    /// Whether requests can be merged along a symbolic first axis of every
    /// input and output (dynamic batching).
    pub fn symbolic_batch(&self) -> bool {
        let m = &self.manifest;
        crate::codec::shared_batch_axis(&m.inputs)
            && m.inputs.iter().chain(&m.outputs).all(|s| matches!(s.shape.first(), Some(Dim::Symbol(_))))
    }

    /// Per-node times of a tract model (see `TractEngine::profile`).
    pub fn profile(&self, inputs: &[Tensor], runs: usize) -> Result<Vec<crate::engine::NodeTime>, String> {
        match &self.engine {
            Engine::Tract(t) => t.profile(inputs, runs).map_err(|e| format!("{e:#}")),
            _ => Err(format!("--profile times tract's operators; this bundle runs {}", self.running)),
        }
    }

    pub fn output_names(&self) -> Vec<String> {
        self.manifest.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Runs a batch of rows in as few model runs as the batch axis allows:
    /// one run when the axis is symbolic or matches, one run per row when the
    /// model takes exactly one row; outputs are concatenated back in order.
    pub fn predict(&self, batch: Batch) -> Result<Vec<Tensor>, PredictError> {
        if batch.rows == 0 {
            return Err(PredictError::BadRequest(BadRequest("the request has no rows".into())));
        }
        if !crate::codec::shared_batch_axis(&self.manifest.inputs) {
            return self.run(batch.inputs);
        }
        let fixed_batch = self.manifest.inputs.iter().find_map(|i| match i.shape.first() {
            Some(Dim::Fixed(n)) => Some(*n as usize),
            _ => None,
        });
        match fixed_batch {
            None => self.run(batch.inputs),
            Some(n) if n == batch.rows => self.run(batch.inputs),
            Some(1) => {
                let mut per_row: Vec<Vec<Tensor>> = Vec::with_capacity(batch.rows);
                for r in 0..batch.rows {
                    let inputs = batch
                        .inputs
                        .iter()
                        .map(|t| t.slice(0, r, r + 1))
                        .collect::<TractResult<Vec<_>>>()
                        .map_err(|e| PredictError::Engine(e.to_string()))?;
                    per_row.push(self.run(inputs)?);
                }
                let outputs = (0..per_row[0].len())
                    .map(|o| {
                        let parts: Vec<&Tensor> = per_row.iter().map(|r| &r[o]).collect();
                        if parts[0].rank() == 0 {
                            bail!("output {o} is a scalar and cannot be stacked per row");
                        }
                        Tensor::stack_tensors(0, &parts)
                    })
                    .collect::<TractResult<Vec<_>>>()
                    .map_err(|e| PredictError::Engine(e.to_string()))?;
                Ok(outputs)
            }
            Some(n) => Err(PredictError::BadRequest(BadRequest(format!(
                "this model takes exactly {n} rows per request (input shape {}); got {}",
                shape_string(&self.manifest.inputs[0].shape),
                batch.rows
            )))),
        }
    }

    /// One run; input shapes and dtypes are checked against the manifest first.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, PredictError> {
        self.check_inputs(&inputs)?;
        crate::guard::guarded(|| self.engine.run(inputs)).map_err(PredictError::Engine)?.map_err(|e| {
            // an engine that finds the request at fault says so with a BadRequest
            match e.downcast::<BadRequest>() {
                Ok(bad) => PredictError::BadRequest(bad),
                Err(e) => PredictError::Engine(format!("{e:#}")),
            }
        })
    }

    /// Checks input count, shapes and dtypes against the manifest.
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), PredictError> {
        if inputs.len() != self.manifest.inputs.len() {
            return Err(PredictError::BadRequest(BadRequest(format!(
                "model takes {} inputs, got {}",
                self.manifest.inputs.len(),
                inputs.len()
            ))));
        }
        for (t, spec) in inputs.iter().zip(&self.manifest.inputs) {
            if !crate::codec::fits(t.shape(), spec) {
                return Err(PredictError::BadRequest(BadRequest(format!(
                    "input `{}` expects shape {}, got {:?}",
                    spec.name,
                    shape_string(&spec.shape),
                    t.shape()
                ))));
            }
            let dt = crate::tensors::dtype_name(t.datum_type()).unwrap_or("?");
            if dt != spec.dtype {
                return Err(PredictError::BadRequest(BadRequest(format!(
                    "input `{}` expects {}, got {dt}",
                    spec.name, spec.dtype
                ))));
            }
        }
        // neural models have no notion of a missing value: a NaN (or an
        // infinity, which becomes one at the first product with a zero) would
        // flow silently into every output, so both are refused (trees route
        // NaN and compare infinities like any value), unless the model's own
        // test data showed that an input takes them (`TensorSpec::non_finite`)
        if !matches!(self.engine, Engine::Trees(..)) {
            for (t, spec) in inputs.iter().zip(&self.manifest.inputs).filter(|(_, s)| !s.non_finite) {
                if let Some((i, x)) = crate::tensors::first_non_finite(t) {
                    let msg = if x.is_nan() {
                        format!(
                            "input `{}` holds NaN (element {i}); this model has no missing-value handling",
                            spec.name
                        )
                    } else {
                        let inf = if x > 0.0 { "Infinity" } else { "-Infinity" };
                        format!("input `{}` holds {inf} (element {i}); this model takes finite values only", spec.name)
                    };
                    return Err(PredictError::BadRequest(BadRequest(msg)));
                }
            }
        }
        Ok(())
    }

    /// Replaces the test vectors (the compiler's verify stage, which makes them).
    pub fn set_test_vectors(&mut self, tv: TestVectors) {
        self.vectors = Vectors::Parsed(tv);
    }

    /// The bundle's test vectors (read from its verified bytes on each call).
    pub fn test_vectors(&self) -> Result<Option<std::borrow::Cow<'_, TestVectors>>, String> {
        match &self.vectors {
            Vectors::None => Ok(None),
            Vectors::Parsed(tv) => Ok(Some(std::borrow::Cow::Borrowed(tv))),
            Vectors::Stored { name, index, data } => {
                let tv = TestVectors::decode(index, |f| data.as_deref().filter(|_| f == TEST_VECTOR_DATA))
                    .map_err(|e| format!("{name}: {e:#}"))?;
                Ok(Some(std::borrow::Cow::Owned(tv)))
            }
        }
    }

    /// Runs the bundle's own test vectors and compares with their expected
    /// outputs, within the tolerances recorded with them: the device-side
    /// health check.
    pub fn self_test(&self) -> Result<SelfTest, String> {
        let Some(tv) = self.test_vectors()? else {
            return Ok(SelfTest { cases: 0, max_abs_error: 0.0 });
        };
        let mut max_abs: f64 = 0.0;
        for (i, case) in tv.cases.iter().enumerate() {
            let inputs = case
                .inputs
                .iter()
                .map(|t| t.to_tensor())
                .collect::<TractResult<Vec<_>>>()
                .map_err(|e| format!("test vector {i}: {e}"))?;
            let outputs = self.run(inputs).map_err(|e| format!("test vector {i}: {e}"))?;
            for (got, want) in outputs.iter().zip(&case.outputs) {
                let want_t = want.to_tensor().map_err(|e| format!("test vector {i}: {e}"))?;
                let c = compare(got, &want_t, tv.atol, tv.rtol)
                    .map_err(|e| format!("test vector {i}, output `{}`: {e}", want.name))?;
                max_abs = max_abs.max(c.max_abs);
                if !c.within {
                    return Err(format!(
                        "test vector {i}, output `{}`: max abs error {:.3e} exceeds tolerance (atol {:.1e}, rtol {:.1e})",
                        want.name, c.max_abs, tv.atol, tv.rtol
                    ));
                }
            }
        }
        Ok(SelfTest { cases: tv.cases.len(), max_abs_error: max_abs })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelfTest {
    pub cases: usize,
    pub max_abs_error: f64,
}

/// Why a prediction failed: the request (4xx) or the engine (5xx).
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error("inference failed: {0}")]
    Engine(String),
}
