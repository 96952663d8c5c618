//! The tract engine: loads a bundle's NNEF model and runs it.
//!
//! Only the NNEF side of tract is linked here (`tract-nnef`, plus the
//! protobuf-free `tract-onnx-opl` operator library for ONNX operators that
//! NNEF has no word for); the runtime never parses ONNX. Each model keeps
//! its own executor (thread pool), so one model's thread count is not
//! another's.

use anyhow::Context;
use tract_core::prelude::*;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx_opl::WithOnnx;
use tract_transformers::WithTractTransformers;

use crate::options::Kernels;

/// Name of the engine in manifests.
pub const ENGINE_NAME: &str = "tract";
/// The tract version this runtime embeds (kept in step with Cargo.toml by a test).
pub const TRACT_VERSION: &str = "0.23.9";
/// The only model format this engine loads.
pub const MODEL_FORMAT: &str = "tract-nnef-tar";
/// Registries (beyond tract_core) this engine can provide.
pub const REGISTRIES: &[&str] = &["tract_onnx", "tract_transformers", NEOC_REGISTRY];
/// neoc's own NNEF registry: operators tract runs but ships no NNEF
/// serializer for, so that bundles can carry them.
pub const NEOC_REGISTRY: &str = "neoc";

/// The NNEF framework with every registry the runtime ships.
pub fn nnef() -> tract_nnef::internal::Nnef {
    tract_nnef::nnef().with_onnx().with_tract_transformers().with_registry(neoc_registry())
}

/// Operators of tract-core without an NNEF form in tract's own registries:
/// - `neoc_rem`: the remainder (ONNX `Mod`, both `fmod` modes, which tract
///   builds from it).
/// - `neoc_gelu_exact`: Gelu with erf (ONNX `Gelu`, and the
///   `0.5·x·(1+erf(x/√2))` chain tract fuses into it).
/// - `neoc_lstm`: the ONNX LSTM over a whole sequence (`kernels::lstm`).
pub fn neoc_registry() -> tract_nnef::internal::Registry {
    let mut r = tract_nnef::internal::Registry::new(NEOC_REGISTRY)
        .with_doc("neoc: operators tract runs that its NNEF registries cannot write");
    r.register_binary("neoc_rem", &tract_core::ops::math::Rem {});
    r.register_unit_element_wise("neoc_gelu_exact", &tract_core::ops::nn::GeluExact {});
    crate::kernels::lstm::register(&mut r);
    r
}

/// A model ready to run.
pub struct TractEngine {
    plan: Box<dyn Runnable>,
    /// The model's own thread pool (or none: single-threaded).
    executor: Executor,
    /// Duration of the last run, in µs: runs shorter than `POOL_MIN_US` stay
    /// on the calling thread (see `in_pool`).
    last_us: std::sync::atomic::AtomicU64,
    /// The model has an operator that shares its own work between threads
    /// at a cost it wins back even in a short run (an LSTM with large steps,
    /// or two directions): its runs go to the pool whatever their length.
    threaded: bool,
}

/// Runs at least this long (µs) go to tract's thread pool; shorter ones stay
/// on the calling thread, single-threaded, where handing the run (or its
/// operators) to a worker and back (about 25 µs measured on fraud-mlp, a 5
/// µs model) would cost more than it saves. (1000 until fraud-mlp's 8192
/// rows came down to 0.7 ms on one thread: its dense layers split their
/// rows over two threads, 0.77 ms → see README's Benchmarks.)
const POOL_MIN_US: u64 = 400;

/// Runs `f` on a worker of tract's thread pool when it has one (`--threads`
/// above 1), else here. tract parallelises matrix products only; run from
/// outside the pool, the calling thread runs every other operator while the
/// pool's workers, done with the last product, spin looking for work: with
/// as many workers as CPUs, three threads then share two CPUs and the serial
/// operators slow down (ShuffleNet ran slower on 2 threads than on 1). Inside
/// the pool, the thread running the plan is one of the workers and takes its
/// share of each product.
fn in_pool<R: Send>(executor: &Executor, f: impl FnOnce() -> R + Send) -> R {
    match executor {
        // the executor is thread-local: set again on the pool's thread
        Executor::MultiThread(pool) if pool.current_thread_index().is_none() => {
            let e = executor.clone();
            pool.install(move || multithread_tract_scope(e, f))
        }
        _ => multithread_tract_scope(executor.clone(), f),
    }
}

/// A private pool of `threads` for one model (none for one thread).
fn executor(threads: usize) -> Executor {
    if threads > 1 {
        Executor::multithread_with_name(threads, "neorun-tract")
    } else {
        Executor::SingleThread
    }
}

/// One node's share of a profiled run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeTime {
    pub node: String,
    pub op: String,
    pub info: String,
    pub mean_us: f64,
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TractEngine")
    }
}

impl TractEngine {
    /// Loads an NNEF tar (as written by `neoc`) and optimizes it for this CPU.
    pub fn from_nnef_tar(bytes: &[u8], kernels: Kernels, threads: usize) -> TractResult<TractEngine> {
        let model = nnef().model_for_read(&mut &bytes[..]).context("loading the NNEF model")?;
        TractEngine::from_typed(model, kernels, threads)
    }

    pub fn from_typed(model: TypedModel, kernels: Kernels, threads: usize) -> TractResult<TractEngine> {
        // neorun's own operators for the ones tract computes slowly
        // (`bench --profile`), swapped in after decluttering (which folds
        // pads into pools) and before tract's code generation: what tract's
        // CPU runtime does (`into_optimized`, then a plan), split in two
        let mut model = model.into_decluttered().context("decluttering the model")?;
        crate::kernels::install(&mut model, kernels)?;
        model.optimize().context("optimizing the model for this CPU")?;
        let threaded = crate::kernels::lstm::uses_threads(&model);
        let plan = TypedSimplePlan::new(model)?;
        Ok(TractEngine { plan: Box::new(plan), executor: executor(threads), last_us: Default::default(), threaded })
    }

    /// Loads an NNEF tar for tract's CUDA runtime (builds with `--features
    /// cuda`); an error when no usable CUDA device or driver is present.
    #[cfg(feature = "cuda")]
    pub fn cuda_from_nnef_tar(bytes: &[u8]) -> TractResult<TractEngine> {
        // keep the crate linked: its runtime registers itself through `inventory`
        let _ = std::any::type_name::<tract_cuda::CudaTransform>();
        let model = nnef().model_for_read(&mut &bytes[..]).context("loading the NNEF model")?;
        // decluttered first, as for the CPU: tract-nnef reads constant-bound
        // slices as DynSlice, which tract-cuda leaves on the CPU (Inception
        // v1: 24 of them, and 129 host-device copies instead of 33)
        let model = model.into_decluttered().context("decluttering the model")?;
        let runtime = runtime_for_name("cuda")?.context("tract's CUDA runtime is not registered")?;
        let plan = runtime.prepare(model).context("preparing the model for the GPU")?;
        Ok(TractEngine { plan, executor: Executor::SingleThread, last_us: Default::default(), threaded: false })
    }

    /// Threads for this model's runs from now on.
    pub fn set_threads(&mut self, threads: usize) {
        self.executor = executor(threads);
    }

    /// The model as prepared for its runtime (translated, optimized).
    pub fn prepared_model(&self) -> Option<&TypedModel> {
        self.plan.typed_plan().map(|p| p.model())
    }

    /// Times every node of the optimized plan over `runs` runs (after one
    /// untimed run), through tract's own evaluation hook: per node, its name,
    /// operator, tract's description of it (kernel, geometry) and mean time.
    pub fn profile(&self, inputs: &[Tensor], runs: usize) -> TractResult<Vec<NodeTime>> {
        let plan = self.plan.typed_plan().context("this engine has no typed plan to profile")?.clone();
        let mut state = TypedSimpleState::new(&plan)?;
        let mut total: std::collections::HashMap<usize, std::time::Duration> = Default::default();
        let runs = runs.max(1);
        // the runs go through the same pool as `run`, so that the times are
        // those a served request sees
        in_pool(&self.executor, || -> TractResult<()> {
            for r in 0..=runs {
                let ins = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
                state.run_plan_with_eval(ins, |ctx, op_state, node, input| {
                    let t0 = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, input);
                    if r > 0 {
                        *total.entry(node.id).or_default() += t0.elapsed();
                    }
                    out
                })?;
            }
            Ok(())
        })?;
        let model = plan.model();
        let mut times: Vec<NodeTime> = total
            .into_iter()
            .map(|(id, d)| {
                let node = model.node(id);
                NodeTime {
                    node: node.name.clone(),
                    op: node.op.name().to_string(),
                    info: node.op.info().map(|i| i.join("; ")).unwrap_or_default(),
                    mean_us: d.as_secs_f64() * 1e6 / runs as f64,
                }
            })
            .collect();
        times.sort_by(|a, b| b.mean_us.total_cmp(&a.mean_us));
        Ok(times)
    }

    /// Runs the model once; inputs in model order, shapes already checked.
    pub fn run(&self, inputs: Vec<Tensor>) -> TractResult<Vec<Tensor>> {
        use std::sync::atomic::Ordering::Relaxed;
        let run = || {
            let outputs = self.plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect())?;
            Ok(outputs.into_iter().map(|t| t.into_tensor()).collect())
        };
        let t0 = std::time::Instant::now();
        let out = if self.threaded || self.last_us.load(Relaxed) >= POOL_MIN_US {
            in_pool(&self.executor, run)
        } else {
            // short runs keep every operator on this thread: handing one to
            // the pool costs about as much as it saves, and the pool's
            // workers then spin against this thread for the CPUs (image-cnn,
            // 100 µs, ran 20% slower on 2 threads than on 1 without this)
            multithread_tract_scope(Executor::SingleThread, run)
        };
        self.last_us.store(t0.elapsed().as_micros() as u64, Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remainder goes through the bundle's NNEF and back, and still computes.
    #[test]
    fn rem_round_trips_through_nnef() -> TractResult<()> {
        let mut m = TypedModel::default();
        let a = m.add_source("a", f32::fact([4]))?;
        let b = m.add_source("b", f32::fact([4]))?;
        let r = m.wire_node("r", tract_core::ops::math::rem(), &[a, b])?;
        m.select_output_outlets(&r)?;
        let mut tar = Vec::new();
        nnef().write_to_tar(&m, &mut tar)?;
        let e = TractEngine::from_nnef_tar(&tar, Kernels::Own, 1)?;
        let out = e.run(vec![tensor1(&[7f32, -7.0, 7.5, 9.0]), tensor1(&[3f32, 3.0, 2.0, 4.5])])?;
        assert_eq!(out[0], tensor1(&[1f32, -1.0, 1.5, 0.0]));
        Ok(())
    }

    /// So does exact Gelu.
    #[test]
    fn gelu_exact_round_trips_through_nnef() -> TractResult<()> {
        let mut m = TypedModel::default();
        let a = m.add_source("a", f32::fact([3]))?;
        let g = m.wire_node("g", tract_core::ops::nn::gelu_exact::gelu_exact(), &[a])?;
        m.select_output_outlets(&g)?;
        let mut tar = Vec::new();
        nnef().write_to_tar(&m, &mut tar)?;
        let e = TractEngine::from_nnef_tar(&tar, Kernels::Own, 1)?;
        let out = e.run(vec![tensor1(&[-1f32, 0.0, 2.0])])?;
        let want = [-0.15865526f32, 0.0, 1.9544997];
        for (g, w) in out[0].try_as_plain_ram()?.as_slice::<f32>()?.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        Ok(())
    }
}
