//! The engines a bundle can name, behind one `Engine`: tract (NNEF), the
//! trees engine, and in feature builds OpenVINO, onnxruntime and AWS Neuron; `placement`
//! reads where tract's CUDA runtime put a model's operators.

#[cfg(any(feature = "openvino", feature = "onnxruntime"))]
pub mod dylib;
#[cfg(feature = "neuron")]
pub mod neuron;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(feature = "openvino")]
pub mod openvino;
pub mod placement;
pub mod tract;
pub mod trees;

use neoc_bundle::manifest::EngineInfo;
use tract_core::prelude::*;

pub use tract::{nnef, NodeTime, TractEngine, ENGINE_NAME, MODEL_FORMAT, NEOC_REGISTRY, REGISTRIES, TRACT_VERSION};

use crate::model::LoadError;
use crate::options::Kernels;
use trees::{Compiled, Forest};

/// Whether this build can run CUDA-target bundles on a GPU.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");
/// Name of the OpenVINO engine in manifests, and the model format it reads.
pub const OPENVINO_ENGINE: &str = "openvino";
pub const OPENVINO_FORMAT: &str = "onnx";
/// Whether this build has the OpenVINO engine (`--features openvino`).
pub const OPENVINO_BUILD: bool = cfg!(feature = "openvino");
/// Name of the onnxruntime engine in manifests, and the model format it reads.
pub const ORT_ENGINE: &str = "onnxruntime";
pub const ORT_FORMAT: &str = "onnx";
/// Whether this build has the onnxruntime engine (`--features onnxruntime`).
pub const ORT_BUILD: bool = cfg!(feature = "onnxruntime");
/// Whether this build has the AWS Neuron engine (`--features neuron`, default).
pub const NEURON_BUILD: bool = cfg!(feature = "neuron");

/// The output tensors of a forest: `label` and `probabilities` for a
/// classifier, `predictions` for a regressor.
pub fn forest_outputs(f: &Forest, labels: Vec<i64>, values: Vec<f32>, rows: usize) -> TractResult<Vec<Tensor>> {
    let values = Tensor::from_shape(&[rows, f.output_width()], &values)?;
    Ok(match &f.task {
        trees::Task::Classifier { .. } => vec![Tensor::from_shape(&[rows], &labels)?, values],
        trees::Task::Regressor => vec![values],
    })
}

/// Threads when the operator gave none: the target's default (the device's
/// cores), at most this host's CPUs; all of them when the target names none.
pub fn default_threads(target_threads: Option<u32>) -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    target_threads.map(|t| (t as usize).clamp(1, cpus)).unwrap_or(cpus)
}

/// A loaded model, in the engine its bundle names.
#[derive(Debug)]
pub enum Engine {
    Tract(TractEngine),
    /// The compiled forest, and the threads its rows are split over.
    Trees(Box<Compiled>, usize),
    #[cfg(feature = "openvino")]
    OpenVino(self::openvino::OvEngine),
    #[cfg(feature = "neuron")]
    Neuron(neuron::NeuronEngine),
    #[cfg(feature = "onnxruntime")]
    Onnxruntime(self::onnxruntime::OrtEngine),
}

/// What loading needs besides the model's bytes.
#[derive(Clone, Copy, Debug)]
pub struct LoadParams<'a> {
    /// The target's precision (OpenVINO's hint).
    pub precision: &'a str,
    pub kernels: Kernels,
    /// Threads inside one run (`OpenOptions::threads`): when `None`, one
    /// for tract and trees, `default_threads` for OpenVINO.
    pub threads: Option<usize>,
    /// The target's default (`default_threads`).
    pub default_threads: usize,
}

impl Engine {
    /// Loads `info`'s model.
    pub fn load_info(info: &EngineInfo, p: LoadParams, bytes: &[u8]) -> Result<Engine, LoadError> {
        if info.name == OPENVINO_ENGINE && info.model_format == OPENVINO_FORMAT {
            return Engine::openvino(info, p, bytes);
        }
        if info.name == ORT_ENGINE && info.model_format == ORT_FORMAT {
            return Engine::onnxruntime(info, p, bytes);
        }
        Engine::load(&info.name, &info.model_format, p, bytes)
    }

    #[cfg(feature = "openvino")]
    fn openvino(info: &EngineInfo, p: LoadParams, bytes: &[u8]) -> Result<Engine, LoadError> {
        use self::openvino::{library, parse_version, release, OvEngine};
        let lib = library().map_err(LoadError::Engine)?;
        if let Some(verified) = parse_version(&info.version) {
            if lib.version < verified {
                return Err(LoadError::Engine(format!(
                    "bundle was verified with OpenVINO {}; this host's library ({}) is OpenVINO {}, older\nhint: install OpenVINO {}.{} or newer (pip install 'openvino>={}.{}'), or point OPENVINO_LIB_PATH at it",
                    info.version,
                    lib.path.display(),
                    release(&lib.build),
                    verified.0,
                    verified.1,
                    verified.0,
                    verified.1
                )));
            }
        }
        crate::guard::guarded(|| OvEngine::new(bytes, p.precision, p.threads.unwrap_or(p.default_threads)))
            .map_err(LoadError::Engine)?
            .map(Engine::OpenVino)
            .map_err(|e| LoadError::Engine(format!("{OPENVINO_ENGINE}: {e:#}")))
    }

    #[cfg(not(feature = "openvino"))]
    fn openvino(_: &EngineInfo, _: LoadParams, _: &[u8]) -> Result<Engine, LoadError> {
        Err(LoadError::Engine(
            "this neorun was built without the OpenVINO engine\nhint: build it with `cargo build --release -p neorun --features openvino` (OpenVINO itself is needed only at run time)".into(),
        ))
    }

    #[cfg(feature = "onnxruntime")]
    fn onnxruntime(info: &EngineInfo, p: LoadParams, bytes: &[u8]) -> Result<Engine, LoadError> {
        use self::onnxruntime::{library, parse_version, OrtEngine, SessionSettings};
        let lib = library().map_err(LoadError::Engine)?;
        if let Some(verified) = parse_version(&info.version) {
            if lib.parsed < verified {
                return Err(LoadError::Engine(format!(
                    "bundle was verified with onnxruntime {}; this host's library ({}) is onnxruntime {}, older\nhint: install onnxruntime {} or newer (pip install 'onnxruntime>={}'), or point ORT_DYLIB_PATH at it",
                    info.version,
                    lib.path.display(),
                    lib.version,
                    info.version,
                    info.version
                )));
            }
        }
        let settings = SessionSettings::from_options(&info.options)
            .map_err(|e| LoadError::Engine(format!("{ORT_ENGINE}: {e:#}")))?;
        crate::guard::guarded(|| OrtEngine::new(bytes, settings, p.threads.unwrap_or(p.default_threads)))
            .map_err(LoadError::Engine)?
            .map(Engine::Onnxruntime)
            .map_err(|e| LoadError::Engine(format!("{ORT_ENGINE}: {e:#}")))
    }

    #[cfg(not(feature = "onnxruntime"))]
    fn onnxruntime(_: &EngineInfo, _: LoadParams, _: &[u8]) -> Result<Engine, LoadError> {
        Err(LoadError::Engine(
            "this neorun was built without the onnxruntime engine\nhint: build it with `cargo build --release -p neorun --features onnxruntime` (onnxruntime itself is needed only at run time)".into(),
        ))
    }

    /// Loads a model of the tract or trees engine.
    pub fn load(name: &str, format: &str, p: LoadParams, bytes: &[u8]) -> Result<Engine, LoadError> {
        match (name, format) {
            (ENGINE_NAME, MODEL_FORMAT) => Ok(Engine::Tract(
                TractEngine::from_nnef_tar(bytes, p.kernels, p.threads.unwrap_or(1))
                    .map_err(|e| LoadError::Engine(format!("{ENGINE_NAME}: {e:#}")))?,
            )),
            (trees::ENGINE_NAME, trees::MODEL_FORMAT) => {
                let f: Forest = serde_json::from_slice(bytes).map_err(|e| LoadError::Engine(format!("trees: {e}")))?;
                let c = Compiled::new(f).map_err(|e| LoadError::Engine(format!("trees: {e}")))?;
                Ok(Engine::Trees(Box::new(c), p.threads.unwrap_or(1).max(1)))
            }
            _ => Err(LoadError::UnknownEngine(format!("{name} ({format})"))),
        }
    }

    /// Threads inside one run from now on.
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.max(1);
        match self {
            Engine::Tract(t) => t.set_threads(threads),
            Engine::Trees(_, t) => *t = threads,
            #[cfg(feature = "openvino")]
            Engine::OpenVino(e) => {
                if let Err(e) = e.set_threads(threads) {
                    tracing::warn!("OpenVINO: keeping the previous thread count: {e:#}");
                }
            }
            // the NeuronCores compute; host threads only feed them
            #[cfg(feature = "neuron")]
            Engine::Neuron(_) => {}
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(e) => {
                if let Err(e) = e.set_threads(threads) {
                    tracing::warn!("onnxruntime: keeping the previous thread count: {e:#}");
                }
            }
        }
    }

    /// One run; inputs in model order, already checked.
    pub fn run(&self, inputs: Vec<Tensor>) -> TractResult<Vec<Tensor>> {
        match self {
            Engine::Tract(t) => t.run(inputs),
            Engine::Trees(c, threads) => {
                let f = &c.forest;
                let x = inputs[0].cast_to::<f32>()?;
                let rows = x.shape()[0];
                let data = x.try_as_plain_ram()?.as_slice::<f32>()?;
                // rows split across threads from 1024 rows: below, spawning
                // the workers costs more than it saves (`neorun bench --sweep`)
                let (labels, values) = if *threads > 1 && rows >= 1024 {
                    let nf = f.num_features;
                    let chunk = rows.div_ceil(*threads);
                    let parts: Vec<(Vec<i64>, Vec<f32>)> = std::thread::scope(|s| {
                        let handles: Vec<_> = data
                            .chunks(chunk * nf)
                            .map(|part| s.spawn(move || c.predict(part, part.len() / nf)))
                            .collect();
                        handles.into_iter().map(|h| h.join().expect("tree worker panicked")).collect()
                    });
                    parts.into_iter().fold((vec![], vec![]), |(mut l, mut v), (pl, pv)| {
                        l.extend(pl);
                        v.extend(pv);
                        (l, v)
                    })
                } else {
                    c.predict(data, rows)
                };
                forest_outputs(f, labels, values, rows)
            }
            #[cfg(feature = "openvino")]
            Engine::OpenVino(e) => e.run(inputs),
            #[cfg(feature = "neuron")]
            Engine::Neuron(e) => e.run(inputs),
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(e) => e.run(inputs),
        }
    }
}
