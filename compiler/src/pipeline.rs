//! The compile pipeline: import → coverage → passes → serialize → verify →
//! package. Each stage is named; the driver reports them as they run.
//!
//! (Over 600 lines: the named stages and the candidate/target bookkeeping
//! that threads through all of them live together so the order reads top to
//! bottom; the lowering per engine and the verification are the parts that
//! would move out first, to `lower/` and `verify.rs`.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use neoc_bundle::container;
use neoc_bundle::manifest::*;
use neoc_runtime::engine::{ENGINE_NAME, MODEL_FORMAT, TRACT_VERSION};
use neoc_runtime::tensors::{compare, dtype_name, NamedTensor, TestCase, TestVectors};
use neoc_targets::{Accelerator, EngineKind, Host, Precision, Target};

use crate::backend;
use tract_onnx::prelude::*;

use crate::import::{self, Framework, ImportError, InputConfig, Located, Unsupported};
use crate::printer::Printer;
use crate::source::Source;

/// The named stages, in order.
pub const STAGES: &[&str] = &["fetch", "import", "coverage", "passes", "serialize", "verify", "package"];

pub struct Options {
    /// One bundle is written per target; the import, passes and verification
    /// are shared (lowering does not depend on the CPU target yet).
    pub targets: Vec<&'static Target>,
    /// `--precision`; `None`: each target's default.
    pub precision: Option<Precision>,
    pub framework: Option<Framework>,
    pub inputs: BTreeMap<String, InputConfig>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// Tolerances; `None`: 1e-4 for fp32, [`FP16_TOLERANCE`] for fp16.
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub allow_mismatch: bool,
    pub seeded_cases: usize,
    /// `--engine`: auto (the target's engines, picked by measurement) or one.
    pub engine: EngineChoice,
    /// `--no-fallback`: OpenVINO bundles without tract's model (about half the size).
    pub no_fallback: bool,
    /// `--neuron-fallback cpu`: without neuronx-cc, build CPU bundles for Neuron targets.
    pub neuron_fallback_cpu: bool,
    pub created: u64,
}

/// What a successful compile produced.
pub struct Compiled {
    pub manifest: Manifest,
    pub files: Vec<(String, Vec<u8>)>,
    pub stage_ms: Vec<(&'static str, u128)>,
    /// Why the bundle has its precision (for `--explain`).
    pub precision_reason: String,
}

/// Verification failed beyond tolerance.
#[derive(Debug, thiserror::Error)]
#[error("verification failed: {0}\nhint: pass --allow-mismatch to package anyway (the error is recorded in the manifest), or --tolerance/--rtol to loosen the check")]
pub struct Mismatch(pub String);

struct Timer<'p> {
    printer: &'p Printer,
    stage_ms: Vec<(&'static str, u128)>,
    current: Option<(&'static str, Instant)>,
}

impl<'p> Timer<'p> {
    fn start(&mut self, stage: &'static str, what: &str) {
        self.finish();
        self.printer.stage(stage, what);
        self.current = Some((stage, Instant::now()));
    }
    fn finish(&mut self) {
        if let Some((s, t)) = self.current.take() {
            self.stage_ms.push((s, t.elapsed().as_millis()));
        }
    }
}

/// A model lowered for one engine, with a way to compute reference outputs.
struct Lowered {
    engine: EngineInfo,
    model_bytes: Vec<u8>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Runs the source model as imported (before any layout or optimisation).
    reference: Reference,
    reference_desc: String,
    /// Inputs to use when the model ships no test data.
    seeded: Seeded,
    /// The source's text properties, for the manifest (`ModelInfo::metadata`).
    metadata: BTreeMap<String, String>,
}

/// Runs the imported model: the reference verification compares with.
type Reference = std::rc::Rc<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>>;
/// Makes seeded inputs for a model that ships no test data.
type Seeded = std::rc::Rc<dyn Fn(&mut SplitMix) -> Result<Vec<Tensor>>>;

/// A model as imported, before lowering.
enum Imported {
    Tract(TypedModel),
    Trees(crate::trees::TreeModel),
    /// An ONNX model neoc's importer (`by`: tract, the trees engine) cannot
    /// take (`why`) and onnxruntime can.
    OnnxruntimeOnly {
        by: &'static str,
        why: String,
    },
}

/// The catalog's targets that compute natively in `p`, for hints.
fn targets_with(p: Precision) -> String {
    neoc_targets::CATALOG.iter().filter(|t| t.supports(p)).map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// The precision each target gets, and why (shown by `--explain`).
pub fn precision_for(t: &Target, explicit: Option<Precision>, trees: bool) -> Result<(Precision, String)> {
    match explicit {
        Some(Precision::Fp16) if trees => bail!(
            "--precision fp16: tree ensembles compile to the trees engine, which computes in fp32 (thresholds compared exactly as the source library compares them)\nhint: drop --precision"
        ),
        Some(p) if !t.supports(p) => bail!(
            "--precision {p}: target {} has no native {p} arithmetic (it computes in {}); emulated fp16 is about 1000x slower than fp32\nhint: targets with fp16: {}",
            t.name,
            t.precisions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
            targets_with(Precision::Fp16)
        ),
        Some(p) => Ok((p, "asked for with --precision".into())),
        None if trees => Ok((Precision::Fp32, "the trees engine computes in fp32".into())),
        None if t.default_precision == Precision::Fp16 => {
            Ok((Precision::Fp16, format!("default for {}: its CPU has fp16 arithmetic (--precision fp32 to keep fp32)", t.name)))
        }
        None => Ok((t.default_precision, format!("default for {}", t.name))),
    }
}

pub fn compile(src: &Source, opts: &Options, printer: &Printer, fetch_ms: u128) -> Result<Vec<Compiled>> {
    let target_names = opts.targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
    let mut timer = Timer { printer, stage_ms: vec![("fetch", fetch_ms)], current: None };
    timer.start("import", "importing");
    let located = import::locate(src, opts.framework)?;
    let mut inputs = located.model_json.clone();
    for (k, v) in &opts.inputs {
        inputs.insert(k.clone(), v.clone());
    }
    let mut prepared = import::Prepared::default();
    let imported = match located.framework {
        Framework::Onnx => {
            let mut proto = import::onnx_proto(&located)?;
            src.fetch_external(located.path.strip_prefix(src.root()).unwrap_or(&located.path), &proto)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", located.rel))?;
            let graph = proto.graph.as_ref().with_context(|| format!("{}: ONNX model has no graph", located.rel))?;
            if crate::trees::has_tree_ops(graph) {
                // a forest the trees engine does not take (set-membership
                // splits, double precision) may still run on onnxruntime
                match crate::trees::onnx_ml(graph, None) {
                    Ok(forest) => Imported::Trees(forest),
                    Err(e) => onnxruntime_instead(anyhow::anyhow!("{}: {e:#}", located.rel), "the trees engine", opts)?,
                }
            } else {
                // tract panics on some graphs (an allocation it cannot make, a
                // constant divided by zero): an error naming the model, not a crash
                match import_onnx(&located, &mut proto, &mut inputs, &target_names, &mut timer) {
                    Ok((typed, prep)) => {
                        prepared = prep;
                        Imported::Tract(typed)
                    }
                    Err(e) => onnxruntime_instead(e, "tract", opts)?,
                }
            }
        }
        Framework::Nnef => {
            if !opts.inputs.is_empty() {
                bail!("--input is not supported for NNEF models: their input shapes are part of graph.nnef");
            }
            let typed = guard_import(&located, || import::nnef(&located))??;
            timer.start("passes", "decluttering");
            Imported::Tract(typed)
        }
        Framework::Xgboost => Imported::Trees(
            crate::trees::xgboost_json(&located.path).map_err(|e| anyhow::anyhow!("{}: {e:#}", located.rel))?,
        ),
        Framework::Lightgbm => Imported::Trees(
            crate::trees::lightgbm_text(&located.path).map_err(|e| anyhow::anyhow!("{}: {e:#}", located.rel))?,
        ),
        other => return Err(import::not_yet(other).into()),
    };
    let is_trees = matches!(imported, Imported::Trees(_));
    let mut ort_only = match &imported {
        Imported::OnnxruntimeOnly { by, why } => Some(format!("{by}: {why}")),
        _ => None,
    };
    let only_onnxruntime_note = |why: &str| {
        printer.note(&format!(
            "only onnxruntime can run this model ({why}): the bundle runs on neorun built with --features onnxruntime, with libonnxruntime on the device (onnxruntime's x86-64 or aarch64 builds), and carries no tract fallback"
        ))
    };
    if let Some(why) = &ort_only {
        only_onnxruntime_note(why);
    }
    let wants_neuron = opts.targets.iter().any(|t| matches!(t.accelerator, Accelerator::Neuron { .. }));
    let neuron = if wants_neuron && !is_trees {
        match backend::find_neuron()? {
            Some(b) => Some(b),
            None if opts.neuron_fallback_cpu => None,
            None => bail!(
                "target {} needs the AWS Neuron compiler (neuronx-cc), which is not installed here\nhint: install the Neuron SDK (pip install neuronx-cc --extra-index-url https://pip.repos.neuron.amazonaws.com) or set {}=COMMAND; or pass --neuron-fallback cpu to build a CPU bundle for it (the manifest says so)",
                opts.targets.iter().filter(|t| matches!(t.accelerator, Accelerator::Neuron { .. })).map(|t| t.name).collect::<Vec<_>>().join(", "),
                backend::NEURON_ENV
            ),
        }
    } else {
        None
    };
    // per target: the engine/precision candidates, in order of preference
    let mut plans: Vec<(&'static Target, Vec<Pair>, Vec<String>)> = Vec::new();
    for t in &opts.targets {
        let (pairs, why) = candidates_for(t, opts, located.framework, is_trees)?;
        plans.push((*t, pairs, why));
    }
    // every pair is lowered and verified once, whatever the number of targets;
    // an OpenVINO or onnxruntime pair needs tract's fp32 model (its reference
    // and fallback)
    let mut pairs: Vec<Pair> = Vec::new();
    // (an onnxruntime pair whose library is missing fails on its own: no
    // extra tract lowering for it, e.g. fp32 beside an fp16 target's fp16)
    let any_openvino = ort_only.is_none()
        && plans.iter().flat_map(|p| &p.1).any(|p| match p.0 {
            EngineKind::Openvino => true,
            EngineKind::Onnxruntime => neoc_runtime::engine::onnxruntime::library().is_ok(),
            EngineKind::Tract => false,
        });
    if any_openvino {
        pairs.push((EngineKind::Tract, Precision::Fp32));
    }
    for p in plans.iter().flat_map(|p| p.1.iter()) {
        if !pairs.contains(p) {
            pairs.push(*p);
        }
    }
    let several = plans.iter().any(|p| p.1.len() > 1);
    // where tract lowers or verifies the model wrongly and onnxruntime is a
    // candidate here, onnxruntime goes on alone instead of the compile failing
    let ort_rescue = any_openvino
        && pairs.contains(&(EngineKind::Onnxruntime, Precision::Fp32))
        && neoc_runtime::engine::onnxruntime::library().is_ok();
    let name = opts.name.clone().unwrap_or_else(|| src.name.clone());
    let version = opts.version.clone().unwrap_or_else(|| src.version.clone());
    let mut outcomes: Vec<(Pair, Outcome)> = Vec::new();
    let non_finite = non_finite_inputs(&located)?;
    let mut imported = Some(imported);
    let mut tract_fp32: Option<std::rc::Rc<Lowered>> = None;
    // the ONNX file, read once for every OpenVINO or onnxruntime pair
    let mut onnx: Option<Vec<u8>> = None;
    // onnxruntime on the source model: every ONNX bundle is checked against it
    let cross = if located.framework == Framework::Onnx { Some(CrossCheck::new(&located, &mut onnx)) } else { None };
    for (ix, pair) in pairs.iter().enumerate() {
        let (engine, precision) = *pair;
        let lowered: std::rc::Rc<Lowered> = match engine {
            EngineKind::Tract => {
                let later = pairs[ix + 1..].iter().any(|p| p.0 == EngineKind::Tract);
                let l = match imported.as_ref().expect("imported until the last lowering") {
                    Imported::Tract(m) => {
                        let m = if later {
                            m.clone()
                        } else {
                            match imported.take() {
                                Some(Imported::Tract(m)) => m,
                                _ => unreachable!(),
                            }
                        };
                        match lower_tract(m, precision, &target_names, &mut timer) {
                            Ok(l) => l,
                            Err(e) if ort_rescue => {
                                let why = format!("{e:#}").lines().next().unwrap_or_default().to_string();
                                if precision == Precision::Fp32 && ort_only.is_none() {
                                    let why = format!("tract: {why}");
                                    only_onnxruntime_note(&why);
                                    ort_only = Some(why);
                                }
                                outcomes.push((*pair, Outcome::failed(format!("unavailable: tract: {why}"))));
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Imported::Trees(_) => match imported.take() {
                        Some(Imported::Trees(tm)) => lower_trees(tm, &inputs, &mut timer)?,
                        _ => unreachable!(),
                    },
                    Imported::OnnxruntimeOnly { by, why } => {
                        outcomes.push((
                            *pair,
                            Outcome::failed(format!("unavailable: {by} cannot import the model: {why}")),
                        ));
                        continue;
                    }
                };
                let l = std::rc::Rc::new(l);
                if precision == Precision::Fp32 && !is_trees {
                    tract_fp32 = Some(l.clone());
                }
                l
            }
            EngineKind::Openvino => {
                let Some(base) = tract_fp32.as_ref() else {
                    outcomes.push((
                        *pair,
                        Outcome::failed(
                            "unavailable: OpenVINO bundles need tract's model (reference and fallback), and tract cannot import this one".into(),
                        ),
                    ));
                    continue;
                };
                // OpenVINO runs a bf16 hint in fp32 on CPUs without bf16
                // arithmetic: such a host cannot measure bf16's accuracy
                let host = Host::detect();
                if precision == Precision::Bf16 && !host.features.iter().any(|f| *f == "avx512bf16" || *f == "amx-bf16")
                {
                    let why = format!("unavailable: this {} host has no bf16 arithmetic (AMX or AVX-512-BF16), so bf16 cannot be verified here", host.arch);
                    if !several {
                        bail!("--precision bf16: {}\nhint: compile on a host with AMX or AVX-512-BF16 (Sapphire Rapids, Zen 4), or use --precision fp32", &why["unavailable: ".len()..]);
                    }
                    outcomes.push((*pair, Outcome::failed(why)));
                    continue;
                }
                match lower_openvino(base, &located, &mut onnx) {
                    Ok(l) => std::rc::Rc::new(l),
                    // asked for alone: the whole error, with its hint
                    Err(e) if !several => return Err(e.context(format!("--engine openvino for {target_names}"))),
                    Err(e) => {
                        outcomes.push((*pair, Outcome::unavailable(&e)));
                        continue;
                    }
                }
            }
            EngineKind::Onnxruntime => {
                let lowered = match tract_fp32.as_ref() {
                    Some(base) => lower_onnxruntime(base, &located, &mut onnx),
                    None => lower_onnxruntime_alone(
                        &located,
                        &inputs,
                        &mut onnx,
                        cross.as_ref(),
                        ort_only.as_deref().unwrap_or(""),
                    ),
                };
                match lowered {
                    Ok(l) => std::rc::Rc::new(l),
                    Err(e) if !several => return Err(e.context(format!("--engine onnxruntime for {target_names}"))),
                    Err(e) => {
                        outcomes.push((*pair, Outcome::unavailable(&e)));
                        continue;
                    }
                }
            }
        };
        let (atol, rtol) = match precision {
            Precision::Fp32 => (opts.atol.unwrap_or(1e-4), opts.rtol.unwrap_or(1e-4)),
            Precision::Fp16 => (opts.atol.unwrap_or(FP16_TOLERANCE), opts.rtol.unwrap_or(FP16_TOLERANCE)),
            Precision::Bf16 => (opts.atol.unwrap_or(BF16_TOLERANCE), opts.rtol.unwrap_or(BF16_TOLERANCE)),
        };
        let first = plans.iter().find(|p| p.1.contains(pair)).map(|p| p.0).unwrap_or(plans[0].0);
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            model: ModelInfo {
                name: name.clone(),
                version: version.clone(),
                framework: located.framework.as_str().into(),
                source: src.recorded.clone(),
                source_digest: src.digest.clone(),
                source_file: located.rel.clone(),
                metadata: lowered.metadata.clone(),
                pinned_inputs: prepared.pinned.clone(),
            },
            target: target_info(first, precision),
            engine: lowered.engine.clone(),
            compiler: ToolInfo { name: "neoc".into(), version: env!("CARGO_PKG_VERSION").into() },
            min_runtime_version: env!("CARGO_PKG_VERSION").into(),
            created: opts.created,
            inputs: lowered
                .inputs
                .iter()
                .enumerate()
                .map(|(i, spec)| TensorSpec { non_finite: non_finite.contains(&i), ..spec.clone() })
                .collect(),
            outputs: lowered.outputs.clone(),
            verification: Verification {
                status: "pending".into(),
                reference: lowered.reference_desc.clone(),
                host: Host::detect().arch.to_string(),
                inputs: String::new(),
                cases: 0,
                max_abs_error: 0.0,
                max_rel_error: 0.0,
                atol,
                rtol,
                independent: None,
                independent_engine: None,
                precision: precision.as_str().into(),
                note: None,
            },
            test_vectors: Some("test_vectors.json".into()),
            files: vec![],
            accelerator_model: None,
            fallback_engine: None,
            engine_selection: None,
            gpu_placement: None,
        };
        timer.start("verify", &format!("comparing the compiled model ({engine}, {precision}) with the source"));
        // a failing candidate among several is recorded and skipped; alone
        // (or tract's own model, which every other one falls back to) it is an error
        let alone = !several || (engine == EngineKind::Tract && any_openvino && precision == Precision::Fp32);
        // onnxruntime checks every engine but itself
        let cross_check = cross.as_ref().filter(|_| engine != EngineKind::Onnxruntime);
        let verified = verify(&lowered, &manifest, &located, opts, precision, cross_check);
        let (verification, vectors, model) = match verified {
            Ok(v) => v,
            Err(e) if !alone || (ort_rescue && engine == EngineKind::Tract) => {
                let first_line = format!("{e:#}").lines().next().unwrap_or_default().to_string();
                if engine == EngineKind::Tract && precision == Precision::Fp32 && ort_rescue {
                    // onnxruntime's bundle can neither check against nor fall back to it
                    tract_fp32 = None;
                    let why = format!("tract: {first_line}");
                    only_onnxruntime_note(&why);
                    ort_only = Some(why);
                }
                let failed = if let Some(Mismatch(detail)) = e.downcast_ref::<Mismatch>() {
                    // the tolerance and the first output beyond it
                    let detail: Vec<&str> = detail.lines().take(2).map(str::trim).collect();
                    Outcome::failed(format!("rejected: {}", detail.join(" ")))
                } else {
                    Outcome::unavailable(&e)
                };
                outcomes.push((*pair, failed));
                continue;
            }
            Err(e) => return Err(e),
        };
        let tv = vectors.encode()?;
        let mut manifest = manifest;
        manifest.verification = verification;
        outcomes.push((
            *pair,
            Outcome {
                lowered: Some(lowered),
                manifest: Some(manifest),
                vectors: tv,
                model: Some(model),
                failure: None,
                hints: vec![],
            },
        ));
    }

    // choose per target: the fastest verified candidate when this host can
    // run the target, else the first verified one in the target's order
    let host = Host::detect();
    let mut timings: BTreeMap<(String, usize), (f64, f64)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut neff: Option<backend::Output> = None;
    for (t, cands, why) in &plans {
        let features: Vec<String> = t.features.iter().map(|s| s.to_string()).collect();
        let measurable = host.check(t.name, t.arch, &features).is_ok() && t.accelerator == Accelerator::None;
        let verified: Vec<Pair> =
            cands.iter().copied().filter(|p| outcome(&outcomes, p).is_some_and(|o| o.failure.is_none())).collect();
        if verified.is_empty() {
            let failures: Vec<String> = cands
                .iter()
                .map(|p| {
                    format!(
                        "{} {}: {}",
                        p.0,
                        p.1,
                        outcome(&outcomes, p).and_then(|o| o.failure.clone()).unwrap_or_default()
                    )
                })
                .collect();
            // every candidate that could run was beyond tolerance (the others
            // unavailable here): a verification failure (exit 3, --allow-mismatch applies)
            let failed_with = |p: &Pair, how: &str| {
                outcome(&outcomes, p).is_some_and(|o| o.failure.as_deref().is_some_and(|f| f.starts_with(how)))
            };
            if cands.iter().any(|p| failed_with(p, "rejected"))
                && cands.iter().all(|p| failed_with(p, "rejected") || failed_with(p, "unavailable"))
            {
                return Err(Mismatch(format!(
                    "no candidate for {} is within tolerance:\n  {}",
                    t.name,
                    failures.join("\n  ")
                ))
                .into());
            }
            let mut hints: Vec<&str> = Vec::new();
            for h in cands.iter().filter_map(|p| outcome(&outcomes, p)).flat_map(|o| &o.hints) {
                if !hints.contains(&h.as_str()) {
                    hints.push(h);
                }
            }
            let hints: String = hints.iter().map(|h| format!("\n{h}")).collect();
            bail!("no engine could compile the model for {}:\n  {}{hints}", t.name, failures.join("\n  "));
        }
        let threads = neoc_runtime::engine::default_threads(t.threads);
        let timed = measurable && verified.len() > 1;
        if timed {
            timer.start("select", &format!("timing {} candidates for {} on this host", verified.len(), t.name));
            for p in &verified {
                let key = (format!("{}-{}", p.0, p.1), threads);
                if let std::collections::btree_map::Entry::Vacant(e) = timings.entry(key) {
                    let o = outcome_mut(&mut outcomes, p).expect("verified");
                    let timing = time_model(o.model.as_mut().expect("verified"), threads)?;
                    e.insert(timing);
                }
            }
        }
        let time_of = |p: &Pair| timings.get(&(format!("{}-{}", p.0, p.1), threads)).copied();
        let (chosen, measured_reason) =
            if timed { choose_measured(&verified, time_of) } else { (verified[0], String::new()) };
        let o = outcome(&outcomes, &chosen).expect("verified");
        let lowered = o.lowered.as_ref().expect("verified");
        let mut m = o.manifest.clone().expect("verified");
        m.target = target_info(t, chosen.1);
        let ort_cuda = chosen.0 == EngineKind::Onnxruntime && matches!(t.accelerator, Accelerator::Cuda { .. });
        if ort_cuda {
            // verified here on onnxruntime's CPU execution provider (the same
            // library, the same graph); the device runs it on the CUDA one
            m.engine.options.insert("execution_provider".into(), "cuda".into());
            let note = format!(
                "verified on this host with onnxruntime's CPU execution provider; on the device onnxruntime's CUDA execution provider runs it (onnxruntime-gpu), which neoc cannot run without a GPU: check it there with `neorun check` (bench/gpu/onnxruntime.sh){}",
                m.verification.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
            );
            m.verification.note = Some(note);
            printer.note(&format!(
                "{}: onnxruntime with its CUDA execution provider (onnxruntime-gpu on the device); verified here on the CPU execution provider only, not run on a GPU",
                t.name
            ));
        }
        let mut files = vec![
            (lowered.engine.model_file.clone(), lowered.model_bytes.clone()),
            ("test_vectors.json".to_string(), o.vectors.0.clone()),
            (neoc_runtime::tensors::TEST_VECTOR_DATA.to_string(), o.vectors.1.clone()),
        ];
        if let (true, false, Some(fb)) = (chosen.0.runs_onnx(), opts.no_fallback, tract_fp32.as_ref()) {
            files.push((fb.engine.model_file.clone(), fb.model_bytes.clone()));
            m.fallback_engine = Some(fb.engine.clone());
        }
        let why = &why[cands.iter().position(|p| *p == chosen).expect("chosen among the candidates")];
        let precision_reason = if cands.len() == 1 {
            why.clone()
        } else if timed {
            format!("{measured_reason} ({why})")
        } else if measurable {
            format!("the only verified candidate ({why})")
        } else {
            format!(
                "first verified candidate in {}'s order; this host cannot run the target to time them ({why})",
                t.name
            )
        };
        if cands.len() > 1 || chosen.0 != EngineKind::Tract {
            m.engine_selection = Some(EngineSelection {
                method: if timed {
                    "measured".into()
                } else if cands.len() == 1 {
                    "requested".into()
                } else if measurable {
                    "only one verified".into()
                } else {
                    "preference".into()
                },
                host: host_description(&host),
                threads: threads as u32,
                candidates: cands
                    .iter()
                    .chain(any_openvino.then_some(&(EngineKind::Tract, Precision::Fp32)).filter(|p| !cands.contains(p)))
                    .map(|p| {
                        let o = outcome(&outcomes, p);
                        let status = match o.and_then(|o| o.failure.clone()) {
                            Some(f) => f,
                            None if *p == chosen => "chosen".into(),
                            None if chosen.0.runs_onnx()
                                && *p == (EngineKind::Tract, Precision::Fp32)
                                && !opts.no_fallback =>
                            {
                                "fallback".into()
                            }
                            None if timed && time_of(p).map(|t| t.0) < time_of(&chosen).map(|t| t.0) => {
                                "not chosen: faster, but within the margin or the measured spread".into()
                            }
                            None if timed => "slower".into(),
                            None => "not chosen (later in the target's order)".into(),
                        };
                        EngineCandidate {
                            engine: p.0.as_str().into(),
                            precision: p.1.as_str().into(),
                            status,
                            median_us: time_of(p).map(|t| t.0),
                            spread_us: time_of(p).map(|t| t.1),
                            max_abs_error: o.and_then(|o| o.manifest.as_ref()).map(|m| m.verification.max_abs_error),
                        }
                    })
                    .collect(),
            });
        }
        if let Accelerator::Neuron { .. } = t.accelerator {
            match (&neuron, is_trees) {
                (_, true) => cpu_bundle(
                    &mut m,
                    "not run",
                    "not compiled: tree ensembles run on the CPU with the trees engine; CPU bundle",
                ),
                (Some(b), false) => {
                    if neff.is_none() {
                        timer.start("backend", &format!("compiling for {} with {}", t.name, b.name));
                        neff = Some(backend::compile_neuron(b, &located.path, located.framework.as_str())?);
                    }
                    let out = neff.as_ref().expect("just compiled");
                    files.push(("model.neff".into(), out.bytes.clone()));
                    m.accelerator_model = Some(AcceleratorModel {
                        format: "neff".into(),
                        file: Some("model.neff".into()),
                        backend: ToolInfo { name: b.name.clone(), version: b.version.clone() },
                        command: out.args.clone(),
                        status: "compiled".into(),
                    });
                }
                // --neuron-fallback cpu (checked above)
                (None, false) => cpu_bundle(
                    &mut m,
                    "not installed",
                    "not compiled: neuronx-cc is not installed (--neuron-fallback cpu); CPU bundle",
                ),
            }
        }
        if let (Accelerator::Cuda { .. }, false, false) = (t.accelerator, is_trees, ort_cuda) {
            timer.start("placement", "finding which operators tract's CUDA runtime runs on the GPU");
            use tract_core::framework::Framework;
            let model = neoc_runtime::engine::nnef()
                .model_for_read(&mut &lowered.model_bytes[..])
                .context("reading back the bundle's NNEF model")?;
            let p = crate::gpu_placement::dry_run(&model);
            let summary = neoc_runtime::engine::placement::summary(&p);
            if p.status == "translated" {
                printer.note(&format!("{}: GPU placement (dry run, no GPU used): {summary}", t.name));
            } else {
                printer.note(&format!(
                    "warning: {}: {summary}\n  on a GPU, neorun runs this bundle only with --cpu-fallback (on the CPU)",
                    t.name
                ));
            }
            m.gpu_placement = Some(p);
        }
        timer.start("package", "packaging");
        files.sort_by(|a, b| a.0.cmp(&b.0));
        m.files = container::file_entries(&files);
        timer.finish();
        out.push(Compiled { manifest: m, files, stage_ms: timer.stage_ms.clone(), precision_reason });
    }
    Ok(out)
}

/// An engine and the precision it computes in.
pub type Pair = (EngineKind, Precision);

/// What lowering and verifying one pair gave.
struct Outcome {
    lowered: Option<std::rc::Rc<Lowered>>,
    /// The manifest as verified (target fields are the first target's).
    manifest: Option<Manifest>,
    /// The stored test vectors: index (JSON) and values (raw).
    vectors: (Vec<u8>, Vec<u8>),
    model: Option<neoc_runtime::Model>,
    /// Why the pair is not usable (`rejected: …`, `unavailable: …`), one line.
    failure: Option<String>,
    /// The `hint:` lines of the error behind `failure`, kept for the
    /// message when no candidate is left.
    hints: Vec<String>,
}

impl Outcome {
    fn failed(why: String) -> Outcome {
        Outcome {
            lowered: None,
            manifest: None,
            vectors: (vec![], vec![]),
            model: None,
            failure: Some(why),
            hints: vec![],
        }
    }

    /// `unavailable: ` and the error's first line, keeping its hints.
    fn unavailable(e: &anyhow::Error) -> Outcome {
        let text = format!("{e:#}");
        let mut o = Outcome::failed(format!("unavailable: {}", text.lines().next().unwrap_or_default()));
        o.hints = text.lines().filter(|l| l.trim_start().starts_with("hint:")).map(|l| l.trim().to_string()).collect();
        o
    }
}

fn outcome<'a>(outcomes: &'a [(Pair, Outcome)], p: &Pair) -> Option<&'a Outcome> {
    outcomes.iter().find(|(q, _)| q == p).map(|(_, o)| o)
}

fn outcome_mut<'a>(outcomes: &'a mut [(Pair, Outcome)], p: &Pair) -> Option<&'a mut Outcome> {
    outcomes.iter_mut().find(|(q, _)| q == p).map(|(_, o)| o)
}

/// The engines asked for: `auto` (the target's engines, chosen by measurement) or one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    Auto,
    Only(EngineKind),
}

/// The engine/precision pairs considered for a target, in the target's
/// order of preference, and why these precisions.
pub fn candidates_for(
    t: &Target,
    opts: &Options,
    framework: Framework,
    trees: bool,
) -> Result<(Vec<Pair>, Vec<String>)> {
    // the engines given the ONNX model as is: CPU targets of their
    // architectures, ONNX models that are not tree ensembles
    if let EngineChoice::Only(e @ (EngineKind::Openvino | EngineKind::Onnxruntime)) = opts.engine {
        use neoc_targets::Arch;
        let (arches, runs): (&[Arch], &str) = match e {
            EngineKind::Openvino => (&[Arch::X86_64], "the OpenVINO engine runs on x86-64 targets only"),
            _ => (&[Arch::X86_64, Arch::Aarch64], "onnxruntime ships for x86-64 and aarch64"),
        };
        if !arches.contains(&t.arch) {
            bail!("--engine {e}: {runs}; {} is {}\nhint: use --engine tract (or leave --engine out)", t.name, t.arch);
        }
        // onnxruntime drives CUDA GPUs through its CUDA execution provider
        let gpu_ok = e == EngineKind::Onnxruntime && matches!(t.accelerator, Accelerator::Cuda { .. });
        if t.accelerator != Accelerator::None && !gpu_ok {
            let runs = if e == EngineKind::Onnxruntime { "the CPU and CUDA GPUs" } else { "the CPU" };
            bail!("--engine {e}: target {} runs on its {} accelerator; neorun's {e} engine runs on {runs}\nhint: use a CPU target (x86_64, ml_c5, ml_c7i, …)", t.name, t.accelerator.as_str());
        }
        if trees {
            bail!("--engine {e}: tree ensembles run on the trees engine ({e} is given ONNX graphs, not ai.onnx.ml trees)\nhint: drop --engine");
        }
        if framework != Framework::Onnx {
            bail!("--engine {e}: {e} is given the ONNX model; this model is {}\nhint: drop --engine, or convert the model to ONNX", framework.as_str());
        }
    }
    if opts.engine == EngineChoice::Only(EngineKind::Onnxruntime) {
        if let Some(p) = opts.precision.filter(|p| *p != Precision::Fp32) {
            bail!("--precision {p}: neorun's onnxruntime engine computes in fp32\nhint: drop --precision, or use --engine tract (fp16) or openvino (bf16)");
        }
    }
    match opts.precision {
        Some(Precision::Bf16) if !t.supports(Precision::Bf16) => bail!(
            "--precision bf16: target {} has no bf16 arithmetic (it needs AMX or AVX-512-BF16; {} computes in {})\nhint: targets with bf16: {}",
            t.name,
            t.name,
            t.precisions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
            targets_with(Precision::Bf16)
        ),
        Some(Precision::Bf16) if opts.engine == EngineChoice::Only(EngineKind::Tract) || trees => bail!(
            "--precision bf16: only the OpenVINO engine computes in bf16\nhint: use --engine openvino (or leave --engine out)"
        ),
        Some(Precision::Fp16) if opts.engine == EngineChoice::Only(EngineKind::Openvino) => {
            bail!("--precision fp16: the OpenVINO engine computes in fp32 or bf16\nhint: use --precision bf16, or --engine tract on an fp16 target")
        }
        _ => {}
    }
    let engines: Vec<EngineKind> = match opts.engine {
        EngineChoice::Only(e) => vec![e],
        EngineChoice::Auto => t
            .engines
            .iter()
            .copied()
            .filter(|e| *e == EngineKind::Tract || (framework == Framework::Onnx && !trees))
            .collect(),
    };
    let mut pairs = Vec::new();
    let mut whys = Vec::new();
    for e in engines {
        match e {
            EngineKind::Tract => {
                if opts.precision == Some(Precision::Bf16) {
                    continue;
                }
                let (p, w) = precision_for(t, opts.precision, trees)?;
                pairs.push((e, p));
                whys.push(w);
            }
            EngineKind::Onnxruntime => {
                if opts.precision.is_some_and(|p| p != Precision::Fp32) {
                    continue;
                }
                pairs.push((e, Precision::Fp32));
                whys.push(match opts.precision {
                    Some(_) => "asked for with --precision".into(),
                    None => format!("onnxruntime on {}: fp32", t.name),
                });
            }
            EngineKind::Openvino => {
                let ps: Vec<Precision> = match opts.precision {
                    Some(p) => vec![p],
                    // bf16 first: the target's preference where it has bf16
                    None => [Precision::Bf16, Precision::Fp32].into_iter().filter(|p| t.supports(*p)).collect(),
                };
                for p in ps {
                    if e.precisions().contains(&p) {
                        pairs.push((e, p));
                        whys.push(match opts.precision {
                            Some(_) => "asked for with --precision".into(),
                            None => format!(
                                "OpenVINO on {}: {}",
                                t.name,
                                t.precisions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" or ")
                            ),
                        });
                    }
                }
            }
        }
    }
    if pairs.is_empty() {
        bail!(
            "no engine of target {} can compute in {}",
            t.name,
            opts.precision.map(|p| p.as_str()).unwrap_or("its precisions")
        );
    }
    Ok((pairs, whys))
}

/// The build host in words, for the record of timings.
fn host_description(host: &Host) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| host.arch.to_string());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cpus} CPUs ({})", host.arch)
}

/// Median and interquartile range (µs) of one inference on the model's
/// first verification case, after warm-up: at least 5 runs, at most 50,
/// about a second in all.
fn time_model(model: &mut neoc_runtime::Model, threads: usize) -> Result<(f64, f64)> {
    model.set_threads(threads);
    let tv = model.test_vectors().map_err(anyhow::Error::msg)?.context("verified models keep their test vectors")?;
    let case = tv.cases.first().context("no verification case to time")?;
    let inputs = case.inputs.iter().map(|t| t.to_tensor()).collect::<TractResult<Vec<_>>>()?;
    for _ in 0..3 {
        model.run(inputs.clone()).map_err(|e| anyhow::anyhow!("timing: {e}"))?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (times.len() < 50 && start.elapsed().as_millis() < 1000) {
        let t = Instant::now();
        model.run(inputs.clone()).map_err(|e| anyhow::anyhow!("timing: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
    Ok((q(0.5), q(0.75) - q(0.25)))
}

/// How much faster than the target's first engine another must be to be
/// chosen over it: beyond this share of its time, and beyond the spread
/// measured for both (noise must not switch engines).
pub const ENGINE_MARGIN: f64 = 0.05;

/// The target's first verified candidate, unless another is faster by more
/// than [`ENGINE_MARGIN`] and the measured spreads; with the reason.
fn choose_measured(verified: &[Pair], time_of: impl Fn(&Pair) -> Option<(f64, f64)>) -> (Pair, String) {
    let first = verified[0];
    let label = |p: &Pair| format!("{} {}", p.0, p.1);
    let Some((t0, s0)) = time_of(&first) else { return (first, "the target's first engine (not timed)".into()) };
    let beats = |p: &Pair| time_of(p).is_some_and(|(t, s)| t < t0 * (1.0 - ENGINE_MARGIN) && t0 - t > s0 + s);
    let best = verified[1..].iter().filter(|p| beats(p)).min_by(|a, b| {
        time_of(a).map(|t| t.0).unwrap_or(f64::MAX).total_cmp(&time_of(b).map(|t| t.0).unwrap_or(f64::MAX))
    });
    match best {
        Some(p) => {
            let (t, _) = time_of(p).expect("timed");
            (
                *p,
                format!(
                    "{} is {:.0}% faster than {} ({:.0} vs {:.0} µs median), beyond the {:.0}% margin and the measured spread",
                    label(p),
                    (1.0 - t / t0) * 100.0,
                    label(&first),
                    t,
                    t0,
                    ENGINE_MARGIN * 100.0
                ),
            )
        }
        None => {
            let fastest_other =
                verified[1..].iter().filter_map(|p| time_of(p).map(|t| (p, t.0))).min_by(|a, b| a.1.total_cmp(&b.1));
            let why = match fastest_other {
                Some((p, t)) if t < t0 => format!(
                    "the target's first engine; {} was {:.1}% faster ({t:.0} vs {t0:.0} µs), within the {:.0}% margin or the measured spread",
                    label(p),
                    (1.0 - t / t0) * 100.0,
                    ENGINE_MARGIN * 100.0
                ),
                Some((p, t)) => format!("the target's first engine, and the fastest ({t0:.0} µs; {} {t:.0} µs)", label(p)),
                None => "the target's first engine".into(),
            };
            (first, why)
        }
    }
}

/// The OpenVINO side of a model: its ONNX file as given, read by OpenVINO's
/// ONNX frontend on the device; tract's fp32 model is its reference.
fn lower_openvino(base: &Lowered, located: &Located, onnx: &mut Option<Vec<u8>>) -> Result<Lowered> {
    let lib = neoc_runtime::engine::openvino::library().map_err(anyhow::Error::msg)?;
    read_onnx(located, onnx)?;
    Ok(Lowered {
        engine: EngineInfo {
            name: neoc_runtime::engine::OPENVINO_ENGINE.into(),
            version: neoc_runtime::engine::openvino::release(&lib.build),
            model_file: "model.onnx".into(),
            model_format: neoc_runtime::engine::OPENVINO_FORMAT.into(),
            registries: vec![],
            options: Default::default(),
        },
        model_bytes: onnx.clone().expect("read above"),
        inputs: base.inputs.clone(),
        outputs: base.outputs.clone(),
        reference: base.reference.clone(),
        reference_desc: base.reference_desc.clone(),
        seeded: base.seeded.clone(),
        metadata: base.metadata.clone(),
    })
}

/// The onnxruntime side of a model: its ONNX file as given, run by
/// onnxruntime's CPU execution provider on the device with the session
/// options recorded here; tract's fp32 model is its reference.
fn lower_onnxruntime(base: &Lowered, located: &Located, onnx: &mut Option<Vec<u8>>) -> Result<Lowered> {
    use neoc_runtime::engine::onnxruntime as ort;
    let lib = ort::library().map_err(anyhow::Error::msg)?;
    read_onnx(located, onnx)?;
    Ok(Lowered {
        engine: EngineInfo {
            name: ort::ENGINE_NAME.into(),
            version: lib.version.clone(),
            model_file: "model.onnx".into(),
            model_format: ort::MODEL_FORMAT.into(),
            registries: vec![],
            options: ort::SessionSettings::default().to_options(),
        },
        model_bytes: onnx.clone().expect("read above"),
        inputs: base.inputs.clone(),
        outputs: base.outputs.clone(),
        reference: base.reference.clone(),
        reference_desc: base.reference_desc.clone(),
        seeded: base.seeded.clone(),
        metadata: base.metadata.clone(),
    })
}

/// An ONNX model neoc's importer (`by`) cannot take becomes an
/// onnxruntime-only model when onnxruntime may be chosen for every target
/// and its library is here; otherwise the importer's error stands, with a
/// hint where onnxruntime would help.
fn onnxruntime_instead(e: anyhow::Error, by: &'static str, opts: &Options) -> Result<Imported> {
    let wanted = match opts.engine {
        EngineChoice::Auto => opts.targets.iter().all(|t| t.engines.contains(&EngineKind::Onnxruntime)),
        EngineChoice::Only(k) => k == EngineKind::Onnxruntime,
    };
    if !wanted || opts.precision.is_some_and(|p| p != Precision::Fp32) {
        return Err(e);
    }
    match neoc_runtime::engine::onnxruntime::library() {
        Ok(_) => {
            let text = format!("{e:#}");
            let why = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("hint:")).collect::<Vec<_>>();
            Ok(Imported::OnnxruntimeOnly { by, why: why.join(" ").split_whitespace().collect::<Vec<_>>().join(" ") })
        }
        Err(missing) => Err(e.context(format!(
            "{by} cannot import this model; onnxruntime might run it, and is not usable here ({}): install it (pip install onnxruntime) or set ORT_DYLIB_PATH, then compile with --engine onnxruntime (x86-64 and aarch64 targets). What {by} lacks",
            missing.lines().next().unwrap_or_default()
        ))),
    }
}

/// An onnxruntime bundle of a model tract cannot import: inputs and outputs
/// as onnxruntime reads them (free dimensions become symbols, or the shapes
/// given with --input / model.json), and onnxruntime itself, in this process,
/// as the reference: so verification checks the bundle's loading, its inputs
/// and outputs, and the shipped expected outputs when there are any, but
/// not the arithmetic against a second engine. The manifest says so.
fn lower_onnxruntime_alone(
    located: &Located,
    given: &BTreeMap<String, InputConfig>,
    onnx: &mut Option<Vec<u8>>,
    cross: Option<&CrossCheck>,
    why: &str,
) -> Result<Lowered> {
    use neoc_runtime::engine::onnxruntime as ort;
    let lib = ort::library().map_err(anyhow::Error::msg)?;
    read_onnx(located, onnx)?;
    let bytes = onnx.clone().expect("read above");
    // the independent check's session, when there is one, is the reference
    let reference = match cross {
        Some(CrossCheck::Ready { engine, .. }) => engine.clone(),
        _ => std::rc::Rc::new(
            neoc_runtime::guard::guarded(|| ort::OrtEngine::new(&bytes, ort::SessionSettings::default(), 1))
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("{}: onnxruntime cannot read the model", located.rel))?,
        ),
    };
    let (ins, outs) = reference.signature()?;
    let spec = |(name, ty, shape): &(String, _, Vec<i64>), given: Option<&InputConfig>| -> Result<TensorSpec> {
        let dtype =
            ort::dtype_name(*ty).with_context(|| format!("`{name}` is of type {ty}, which neorun does not carry"))?;
        let shape = match given.filter(|g| !g.shape.is_empty()) {
            Some(g) => g
                .shape
                .iter()
                .zip(&g.symbols)
                .map(|(d, s)| match d {
                    Some(n) => Dim::Fixed(*n as u64),
                    None => Dim::Symbol(s.clone().unwrap_or_else(|| "N".into())),
                })
                .collect(),
            None => {
                shape.iter().map(|d| if *d >= 0 { Dim::Fixed(*d as u64) } else { Dim::Symbol("N".into()) }).collect()
            }
        };
        Ok(TensorSpec { name: name.clone(), dtype: dtype.into(), shape, non_finite: false })
    };
    let inputs: Vec<TensorSpec> = ins.iter().map(|i| spec(i, given.get(&i.0))).collect::<Result<_>>()?;
    let outputs: Vec<TensorSpec> = outs.iter().map(|o| spec(o, None)).collect::<Result<_>>()?;
    let seed_specs = inputs.clone();
    Ok(Lowered {
        engine: EngineInfo {
            name: ort::ENGINE_NAME.into(),
            version: lib.version.clone(),
            model_file: "model.onnx".into(),
            model_format: ort::MODEL_FORMAT.into(),
            registries: vec![],
            options: ort::SessionSettings::default().to_options(),
        },
        model_bytes: bytes,
        inputs,
        outputs,
        reference: std::rc::Rc::new(move |ins: &[Tensor]| {
            neoc_runtime::guard::guarded(|| reference.run(ins.to_vec()))
                .map_err(|e| anyhow::anyhow!("running the reference model: {e}"))?
                .map_err(|e| anyhow::anyhow!("running the reference model: {e}"))
        }),
        reference_desc: format!(
            "source model run by onnxruntime {} (neoc's importer cannot run it: {why}); the bundle runs on onnxruntime too, so this checks its loading, inputs and outputs, not the arithmetic against a second engine",
            lib.version
        ),
        seeded: std::rc::Rc::new(move |rng: &mut SplitMix| seed_specs.iter().map(|s| seeded_input(s, rng)).collect()),
        metadata: BTreeMap::new(),
    })
}

/// The inputs (by position) the model's own test data feeds NaN or
/// infinities: the model takes them on purpose (IsNaN, IsInf, masks of
/// -inf), so the runtime lets them through (`TensorSpec::non_finite`).
fn non_finite_inputs(located: &Located) -> Result<std::collections::BTreeSet<usize>> {
    let mut found = std::collections::BTreeSet::new();
    for set in &located.test_sets {
        for (i, p) in set.inputs.iter().enumerate() {
            if !found.contains(&i) && neoc_runtime::tensors::first_non_finite(&import::load_tensor_pb(p)?.1).is_some() {
                found.insert(i);
            }
        }
    }
    Ok(found)
}

/// Reads the source ONNX file once, for every engine that takes it as is.
fn read_onnx(located: &Located, onnx: &mut Option<Vec<u8>>) -> Result<()> {
    if onnx.is_none() {
        *onnx = Some(std::fs::read(&located.path).with_context(|| format!("reading {}", located.rel))?);
    }
    Ok(())
}

/// onnxruntime on the source ONNX model, as the compiler's independent
/// check of every bundle (whatever its engine), or why it is not there.
enum CrossCheck {
    Ready { engine: std::rc::Rc<neoc_runtime::engine::onnxruntime::OrtEngine>, source: String },
    Missing(String),
}

impl CrossCheck {
    fn new(located: &Located, onnx: &mut Option<Vec<u8>>) -> CrossCheck {
        use neoc_runtime::engine::onnxruntime as ort;
        let lib =
            match ort::library() {
                Ok(l) => l,
                Err(e) if e.contains("was not found") => return CrossCheck::Missing(
                    "onnxruntime not found here: set ORT_DYLIB_PATH, or pip install onnxruntime, to check against it"
                        .into(),
                ),
                Err(e) => return CrossCheck::Missing(e.lines().next().unwrap_or_default().to_string()),
            };
        if let Err(e) = read_onnx(located, onnx) {
            return CrossCheck::Missing(format!("{e:#}"));
        }
        let bytes = onnx.as_deref().expect("read above");
        match neoc_runtime::guard::guarded(|| ort::OrtEngine::new(bytes, ort::SessionSettings::default(), 1)) {
            Ok(Ok(engine)) => {
                CrossCheck::Ready { engine: std::rc::Rc::new(engine), source: format!("onnxruntime {}", lib.version) }
            }
            Ok(Err(e)) => {
                CrossCheck::Missing(format!("onnxruntime {} cannot load the source model: {e:#}", lib.version))
            }
            Err(e) => CrossCheck::Missing(format!("onnxruntime {} failed on the source model: {e}", lib.version)),
        }
    }
}

/// Makes a Neuron target's bundle a CPU bundle that says why no NEFF is in it.
fn cpu_bundle(m: &mut Manifest, backend_version: &str, status: &str) {
    m.target.accelerator = "none".into();
    m.target.accelerator_arch = None;
    m.target.cpu_fallback = false;
    m.accelerator_model = Some(AcceleratorModel {
        format: "neff".into(),
        file: None,
        backend: ToolInfo { name: backend::NEURON_DEFAULT.into(), version: backend_version.into() },
        command: vec![],
        status: status.into(),
    });
}

/// Default absolute and relative tolerance of fp16 bundles against the fp32
/// reference (fp16 keeps about 3 significant decimal digits).
pub const FP16_TOLERANCE: f64 = 1e-2;
/// The same for bf16 (8 bits of mantissa: about 2 significant decimal digits,
/// with errors that grow through deep networks).
pub const BF16_TOLERANCE: f64 = 5e-2;

fn target_info(t: &Target, precision: Precision) -> TargetInfo {
    TargetInfo {
        name: t.name.into(),
        triple: t.triple.into(),
        arch: t.arch.as_str().into(),
        features: t.features.iter().map(|s| s.to_string()).collect(),
        accelerator: t.accelerator.as_str().into(),
        accelerator_arch: t.accelerator.arch(),
        // the bundle's model is the engine's CPU model: with an accelerator,
        // it is the fallback
        cpu_fallback: t.accelerator != neoc_targets::Accelerator::None,
        precision: precision.as_str().into(),
        threads: t.threads,
    }
}

/// Translates the model's float computations to fp16, keeping its inputs
/// and outputs in fp32 (casts at the boundary), so a bundle's interface does
/// not depend on its precision.
///
/// The inputs' side stays in fp32 up to and including the first weighted
/// operators (matrix products, convolutions): they see raw inputs — tabular
/// features in the hundreds of thousands, beyond fp16's 65504 — and the
/// model's own preprocessing. Found by running fraud-mlp's sample through the
/// aarch64 fp16 kernels under qemu: NaN otherwise, while the x86 check (whose
/// test case happened to stay in range) passed.
fn to_fp16(model: &TypedModel) -> Result<TypedModel> {
    use std::collections::HashSet;
    use tract_core::floats::FloatPrecisionTranslator;
    use tract_core::model::translator::Translate;
    use tract_core::ops::cast::{cast, Cast};
    use tract_core::ops::cnn::Conv;
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::konst::Const;
    use tract_core::ops::source::TypedSource;
    // raw: the inputs and what is computed from them before any weighted
    // operator; the first weighted operators, which take raw values, stay fp32
    // too; everything after them is translated
    let weighted = |n: &TypedNode| n.op_is::<EinSum>() || n.op_is::<Conv>();
    let mut raw: HashSet<usize> = HashSet::new();
    let mut translate: HashSet<usize> = HashSet::new();
    for id in model.eval_order()? {
        let n = model.node(id);
        let any_raw = n.inputs.iter().any(|i| raw.contains(&i.node));
        if n.op_is::<TypedSource>() || (any_raw && !weighted(n)) {
            raw.insert(id);
        } else if !any_raw && n.inputs.iter().any(|i| !model.node(i.node).op_is::<Const>()) {
            // downstream of a first layer (a first layer itself, any_raw, stays fp32)
            translate.insert(id);
        }
    }
    // weights feeding only fp16 nodes become fp16 constants
    for n in model.nodes() {
        if n.op_is::<Const>()
            && !n.outputs[0].successors.is_empty()
            && n.outputs[0].successors.iter().all(|s| translate.contains(&s.node))
        {
            translate.insert(n.id);
        }
    }
    let names: HashSet<String> = translate.iter().map(|id| model.node(*id).name.clone()).collect();
    let mut m =
        FloatPrecisionTranslator::with_filter(f32::datum_type(), f16::datum_type(), move |n| names.contains(&n.name))
            .translate_model(model)
            .context("translating the model to fp16")?;
    // the translator makes every source fp16; put them back to fp32
    for o in m.input_outlets()?.to_vec() {
        let fact = m.outlet_fact(o)?.clone();
        if fact.datum_type != f16::datum_type() {
            continue;
        }
        let mut f32_fact = fact.clone();
        f32_fact.datum_type = f32::datum_type();
        let successors = m.node(o.node).outputs[o.slot].successors.clone();
        let name = m.node(o.node).name.clone();
        m.node_mut(o.node).op = Box::new(TypedSource::new(f32_fact.clone()));
        m.node_mut(o.node).outputs[o.slot].fact = f32_fact;
        let mut to_fp16 = None;
        for inlet in successors {
            // an fp32 consumer already casts back: with an fp32 source that cast is a no-op
            if m.node(inlet.node).op_as::<Cast>().is_some_and(|c| c.to == f32::datum_type()) {
                continue;
            }
            let c = match to_fp16 {
                Some(c) => c,
                None => {
                    let c = m.wire_node(format!("{name}.to_fp16"), cast(f16::datum_type()), &[o])?[0];
                    to_fp16 = Some(c);
                    c
                }
            };
            m.add_edge(c, inlet)?;
        }
    }
    let mut outputs = Vec::new();
    for o in m.output_outlets()?.to_vec() {
        if m.outlet_fact(o)?.datum_type != f16::datum_type() {
            outputs.push(o);
            continue;
        }
        let label = outlet_name(&m, o);
        m.set_outlet_label(o, format!("{label}.fp16"))?;
        let c = m.wire_node(format!("{label}.to_fp32"), cast(f32::datum_type()), &[o])?[0];
        m.set_outlet_label(c, label)?;
        outputs.push(c);
    }
    m.select_output_outlets(&outputs)?;
    Ok(m)
}

fn lower_tract(mut model: TypedModel, precision: Precision, targets: &str, timer: &mut Timer) -> Result<Lowered> {
    let reference = model.clone();
    model.declutter().context("decluttering the model")?;
    crate::passes::run(&mut model)?;
    check_io_types(&model)?;
    if precision == Precision::Fp16 {
        model = to_fp16(&model)?;
        model.declutter().context("decluttering the fp16 model")?;
    }

    timer.start("coverage", "checking the bundle format can carry every operator");
    let nnef = neoc_runtime::engine::nnef();
    let unserializable = unserializable_nodes(&model, &nnef);
    if !unserializable.is_empty() {
        timer.finish();
        return Err(ImportError::UnsupportedOps { target: targets.into(), list: unserializable }.into());
    }

    timer.start("serialize", "writing the NNEF model");
    let (nnef_tar, metadata) = write_nnef(&mut model, &nnef)?;
    // registries beyond tract_onnx are named only when the graph uses them
    let mut registries = vec!["tract_onnx".to_string()];
    for r in ["tract_transformers", neoc_runtime::engine::NEOC_REGISTRY] {
        let ext = format!("tract_registry {r}");
        if nnef_tar.windows(ext.len()).any(|w| w == ext.as_bytes()) {
            registries.push(r.into());
        }
    }
    let inputs = specs(&model, model.input_outlets()?)?;
    let outputs = specs(&model, model.output_outlets()?)?;
    let plan = reference.into_runnable().context("preparing the reference model")?;
    let seed_specs = inputs.clone();
    Ok(Lowered {
        engine: EngineInfo {
            name: ENGINE_NAME.into(),
            version: TRACT_VERSION.into(),
            model_file: "model.nnef.tar".into(),
            model_format: MODEL_FORMAT.into(),
            registries,
            options: Default::default(),
        },
        model_bytes: nnef_tar,
        inputs,
        outputs,
        reference: std::rc::Rc::new(move |ins: &[Tensor]| {
            Ok(neoc_runtime::guard::guarded(|| plan.run(ins.iter().cloned().map(|t| t.into_tvalue()).collect()))
                .map_err(|e| anyhow::anyhow!("running the reference model: {e}"))?
                .context("running the reference model")?
                .into_iter()
                .map(|t| t.into_tensor())
                .collect())
        }),
        reference_desc: format!("source model imported by tract {TRACT_VERSION}, unoptimized"),
        seeded: std::rc::Rc::new(move |rng: &mut SplitMix| seed_specs.iter().map(|s| seeded_input(s, rng)).collect()),
        metadata,
    })
}

/// The model as the bundle's NNEF archive (canonical tar), written so that
/// tract's reader takes it back whatever its names and properties: text
/// properties move out (returned, for the manifest) and names are made
/// ASCII. The model keeps its names.
pub fn write_nnef(
    model: &mut TypedModel,
    nnef: &tract_nnef::internal::Nnef,
) -> Result<(Vec<u8>, BTreeMap<String, String>)> {
    let metadata = take_text_properties(model);
    let ascii = nnef_safe_names(model);
    let tar = nnef
        .write_to_tar_with_config(ascii.as_ref().unwrap_or(model), Vec::new(), false, true)
        .map_err(|e| anyhow::anyhow!("the model cannot be written as NNEF: {e:#}"))?;
    Ok((canonical_tar(&tar).context("re-encoding the NNEF archive")?, metadata))
}

/// Words of NNEF's grammar: a tensor so named is written as is by tract
/// and read back as the word (`true = abs(x)` makes `true` a literal, and a
/// different graph; found by the `nnef_round_trip` fuzz target). tract's
/// reader also takes the start of `true_x` or `falsely` for a literal.
const NNEF_WORDS: &[&str] = &[
    "version",
    "extension",
    "fragment",
    "graph",
    "tensor",
    "integer",
    "scalar",
    "logical",
    "string",
    "true",
    "false",
    "for",
    "in",
    "if",
    "else",
    "yield",
    "length_of",
    "shape_of",
    "range_of",
];

fn nnef_word(name: &str) -> bool {
    NNEF_WORDS.contains(&name) || name.starts_with("true") || name.starts_with("false")
}

fn nnef_safe(name: &str) -> bool {
    name.is_ascii() && !nnef_word(name)
}

/// The model with every node name and outlet label NNEF can take back, or
/// `None` when all are: a non-ASCII letter becomes `_uXXXX` (`日本` →
/// `_u65e5_u672c`; tract's writer spells it as is, which its reader does
/// not take back), and a word of NNEF's grammar gets a `_` before it. The
/// bundle's inputs and outputs keep their names in the manifest (the NNEF
/// model is run by position).
fn nnef_safe_names(model: &TypedModel) -> Option<TypedModel> {
    if model.nodes().iter().all(|n| nnef_safe(&n.name)) && model.outlet_labels.values().all(|l| nnef_safe(l)) {
        return None;
    }
    let mut m = model.clone();
    let mut taken: std::collections::HashSet<String> = m.nodes().iter().map(|n| n.name.clone()).collect();
    taken.extend(m.outlet_labels.values().cloned());
    let mut ascii = |s: &str| -> String {
        let mut base: String =
            s.chars().map(|c| if c.is_ascii() { c.to_string() } else { format!("_u{:04x}", c as u32) }).collect();
        if nnef_word(&base) {
            base.insert(0, '_');
        }
        let mut name = base.clone();
        let mut k = 1;
        while taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        taken.insert(name.clone());
        name
    };
    for node in m.nodes_mut() {
        if !nnef_safe(&node.name) {
            node.name = ascii(&node.name);
        }
    }
    for label in m.outlet_labels.values_mut() {
        if !nnef_safe(label) {
            *label = ascii(label);
        }
    }
    Some(m)
}

/// Moves every text property out of the model (into the manifest): tract's
/// NNEF writer quotes strings in a form its reader does not take back (an
/// apostrophe, a newline, a backslash), so a bundle must not depend on it.
/// Keys of ONNX `metadata_props` lose tract's `onnx.metadata_props.` prefix.
fn take_text_properties(model: &mut TypedModel) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let keys: Vec<String> =
        model.properties.iter().filter(|(_, v)| v.datum_type() == DatumType::String).map(|(k, _)| k.clone()).collect();
    for k in keys {
        let v = model.properties.remove(&k).expect("listed above");
        let text = v.try_as_plain_ram().ok().and_then(|t| t.as_slice::<String>().ok().map(|s| s.join("\n")));
        let key = k.strip_prefix("onnx.metadata_props.").unwrap_or(&k).to_string();
        out.entry(key).or_insert(text.unwrap_or_default());
    }
    out
}

fn lower_trees(
    tm: crate::trees::TreeModel,
    inputs: &BTreeMap<String, InputConfig>,
    timer: &mut Timer,
) -> Result<Lowered> {
    timer.start("serialize", "laying out the trees");
    let f = tm.forest;
    let nf = f.num_features;
    // the batch axis stays symbolic unless --input/model.json fixes it
    let batch = match inputs.get(&tm.input_name) {
        Some(cfg) => {
            if cfg.shape.len() != 2 || cfg.shape[1].is_some_and(|w| w != nf) {
                bail!(
                    "input `{}` of this tree model has shape [N,{nf}]; the input configuration says {:?}",
                    tm.input_name,
                    cfg.shape
                );
            }
            cfg.shape[0].map(|b| Dim::Fixed(b as u64)).unwrap_or(Dim::Symbol("N".into()))
        }
        None => Dim::Symbol("N".into()),
    };
    for k in inputs.keys() {
        if *k != tm.input_name {
            bail!(
                "input `{k}` given in the input configuration is not an input of the model; its input is `{}`",
                tm.input_name
            );
        }
    }
    let seed_rows = match &batch {
        Dim::Fixed(b) => *b as usize,
        Dim::Symbol(_) => 64,
    };
    let input = TensorSpec {
        name: tm.input_name.clone(),
        dtype: "f32".into(),
        shape: vec![batch.clone(), Dim::Fixed(nf as u64)],
        non_finite: false,
    };
    let width = Dim::Fixed(f.output_width() as u64);
    let outputs = match &f.task {
        neoc_runtime::engine::trees::Task::Classifier { .. } => vec![
            TensorSpec {
                name: tm.output_names[0].clone(),
                dtype: "i64".into(),
                shape: vec![batch.clone()],
                non_finite: false,
            },
            TensorSpec {
                name: tm.output_names.get(1).cloned().unwrap_or_else(|| "probabilities".into()),
                dtype: "f32".into(),
                shape: vec![batch, width],
                non_finite: false,
            },
        ],
        neoc_runtime::engine::trees::Task::Regressor => {
            vec![TensorSpec {
                name: tm.output_names[0].clone(),
                dtype: "f32".into(),
                shape: vec![batch, width],
                non_finite: false,
            }]
        }
    };
    let mut bytes = serde_json::to_vec(&f)?;
    bytes.push(b'\n');
    let ir = tm.ir;
    let forest = f.clone();
    // seeded rows: values around the thresholds each feature is split on, and some NaNs
    let mut cuts: Vec<Vec<f32>> = vec![vec![]; nf];
    for i in 0..f.feature.len() {
        if f.flags[i] & neoc_runtime::engine::trees::LEAF == 0 {
            cuts[f.feature[i] as usize].push(f.threshold[i]);
        }
    }
    Ok(Lowered {
        engine: EngineInfo {
            name: neoc_runtime::engine::trees::ENGINE_NAME.into(),
            version: neoc_runtime::engine::trees::VERSION.to_string(),
            model_file: "model.trees.json".into(),
            model_format: neoc_runtime::engine::trees::MODEL_FORMAT.into(),
            registries: vec![],
            options: Default::default(),
        },
        model_bytes: bytes,
        inputs: vec![input],
        outputs,
        reference: std::rc::Rc::new(move |ins: &[Tensor]| {
            let x = ins[0].cast_to::<f32>()?;
            let rows = x.shape()[0];
            let m = crate::trees::reference_margins(&ir, &forest, x.try_as_plain_ram()?.as_slice::<f32>()?, rows);
            let (labels, values) = forest.finish(m, rows);
            neoc_runtime::engine::forest_outputs(&forest, labels, values, rows)
        }),
        reference_desc: "imported trees evaluated node by node, before layout".into(),
        seeded: std::rc::Rc::new(move |rng: &mut SplitMix| {
            let rows = seed_rows;
            let mut v = Vec::with_capacity(rows * nf);
            for _ in 0..rows {
                for c in &cuts {
                    let r = rng.next();
                    v.push(if r.is_multiple_of(20) {
                        f32::NAN
                    } else if c.is_empty() {
                        (rng.unit() * 2.0 - 1.0) as f32
                    } else {
                        let t = c[(r as usize / 20) % c.len()];
                        t + (rng.unit() as f32 - 0.5) * (t.abs() * 0.01 + 1e-3)
                    });
                }
            }
            Ok(vec![Tensor::from_shape(&[rows, nf], &v)?])
        }),
        metadata: BTreeMap::new(),
    })
}

/// Inputs and outputs must have types the runtime can take and give.
fn check_io_types(model: &TypedModel) -> Result<()> {
    for (kind, outlets) in [("input", model.input_outlets()?), ("output", model.output_outlets()?)] {
        for o in outlets {
            let dt = model.outlet_fact(*o)?.datum_type;
            if dtype_name(dt).is_none() {
                bail!("{kind} `{}` has type {dt:?}, which neoc bundles cannot carry yet", outlet_name(model, *o));
            }
        }
    }
    Ok(())
}

fn outlet_name(model: &TypedModel, o: OutletId) -> String {
    model.outlet_label(o).map(String::from).unwrap_or_else(|| model.node(o.node).name.clone())
}

fn specs(model: &TypedModel, outlets: &[OutletId]) -> Result<Vec<TensorSpec>> {
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o)?;
            let shape = fact
                .shape
                .iter()
                .map(|d| match d.to_i64() {
                    Ok(n) => Dim::Fixed(n as u64),
                    Err(_) => Dim::Symbol(d.to_string()),
                })
                .collect();
            Ok(TensorSpec {
                name: if model.inputs.contains(o) { model.node(o.node).name.clone() } else { outlet_name(model, *o) },
                dtype: dtype_name(fact.datum_type).unwrap_or("?").into(),
                shape,
                non_finite: false,
            })
        })
        .collect()
}

/// Nodes for which no NNEF registry the runtime ships has a serializer: all
/// of them, with their names, so a user sees the whole list at once.
fn unserializable_nodes(model: &TypedModel, nnef: &tract_nnef::internal::Nnef) -> Vec<Unsupported> {
    use tract_core::ops;
    let mut out = Vec::new();
    for node in model.nodes() {
        let op = node.op();
        if node.op_is::<ops::source::TypedSource>()
            || node.op_is::<ops::konst::Const>()
            || node.op_is::<ops::identity::Identity>()
        {
            continue;
        }
        let covered = nnef.registries.iter().any(|reg| {
            if let Some(ew) = op.downcast_ref::<ops::element_wise::ElementWiseOp>() {
                let id = ew.0.type_id();
                reg.unit_element_wise_ops.iter().any(|e| e.1.as_ref().type_id() == id)
                    || reg.element_wise_ops.iter().any(|e| e.1 == id)
            } else if let Some(bin) = op.downcast_ref::<ops::binary::TypedBinOp>() {
                let id = bin.0.type_id();
                reg.binary_ops.iter().any(|b| b.1.as_ref().type_id() == id)
            } else {
                reg.from_tract.contains_key(&op.type_id())
            }
        });
        if !covered {
            out.push(Unsupported {
                node: node.name.clone(),
                op: op.name().to_string(),
                why: "tract runs it, but the bundle format (NNEF) cannot carry it yet".into(),
            });
        }
    }
    out
}

/// Re-encodes a tar with entries sorted by name and fixed metadata, so that
/// the NNEF archive is byte-identical from run to run.
fn canonical_tar(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path()?.to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data)?;
        entries.push((name, data));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(315532800);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, &data[..])?;
    }
    Ok(b.into_inner()?)
}

/// A tiny deterministic PRNG (splitmix64) for seeded verification inputs.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs an importer, turning a panic inside tract into an error naming the model.
/// ONNX to a typed tract model: the rewrites and the coverage pre-flight
/// (`import::onnx`), then typing. An export's `value_info` that still stops
/// typing (no input facts were given) is dropped and typing tried again.
fn import_onnx(
    located: &import::Located,
    proto: &mut tract_onnx::pb::ModelProto,
    inputs: &mut BTreeMap<String, InputConfig>,
    targets: &str,
    timer: &mut Timer,
) -> Result<(TypedModel, import::Prepared)> {
    // tract panics on some graphs (an allocation it cannot make, a
    // constant divided by zero): an error naming the model, not a crash
    let (inference, mut prepared) = guard_import(located, || import::onnx(located, proto, inputs, targets))??;
    let lacking = import::inputs_without_facts(&inference);
    timer.start("passes", "typing and decluttering");
    let first = guard_import(located, || inference.into_typed())?;
    let err = match first {
        Ok(typed) => return Ok((typed, prepared)),
        Err(e) => e,
    };
    let graph = proto.graph.as_mut().expect("imported");
    if crate::onnx_prep::has_value_info(graph) {
        let dropped = crate::onnx_prep::strip_value_info(graph);
        let (again, _) = guard_import(located, || import::onnx(located, proto, inputs, targets))??;
        if let Ok(typed) = guard_import(located, || again.into_typed())? {
            prepared.value_info_dropped += dropped;
            return Ok((typed, prepared));
        }
    }
    Err(typing_error(&format!("{err:#}"), &lacking, &prepared))
}

/// A typing failure in neoc's words: the node, its operator, the shapes
/// that disagree, and the likely cause; the `--input` hint only when an
/// input really has no fact.
fn typing_error(tract: &str, lacking: &[String], prepared: &import::Prepared) -> anyhow::Error {
    // tract: `Failed analyse for node #1 "t" Clip: Infering facts: …: Unifying shapes 1,4 and batch,4: …`;
    // nested bodies (an If's branches) name the outer node first
    let nodes: Vec<(String, String)> = tract
        .split("node #")
        .skip(1)
        .filter_map(|rest| {
            let (_, after) = rest.split_once('"')?;
            let (name, tail) = after.split_once('"')?;
            let op = tail.trim_start().split(|c: char| c == ':' || c.is_whitespace()).next().unwrap_or("");
            Some((name.to_string(), op.trim_start_matches("Inference").to_string()))
        })
        .collect();
    let shapes = tract.split("Unifying shapes ").nth(1).and_then(|s| s.split(':').next()).map(|s| s.trim().to_string());
    let in_if = nodes.iter().any(|(_, op)| op == "If");
    let mut msg = match (nodes.first(), nodes.last()) {
        (Some(outer), Some(inner)) if nodes.len() > 1 => format!(
            "type and shape inference failed at node `{}` ({}) inside `{}` ({})",
            inner.0, inner.1, outer.0, outer.1
        ),
        (Some((name, op)), _) => format!("type and shape inference failed at node `{name}` ({op})"),
        _ => "type and shape inference failed".to_string(),
    };
    if let Some(s) = &shapes {
        msg.push_str(&format!(": shapes {s} do not agree"));
    }
    msg.push_str(&format!("\n  tract: {tract}"));
    let cause = if in_if {
        Some("likely cause: an If whose branches give differently shaped outputs and whose condition is only known at run time; pin the inputs it depends on with --input NAME=VALUE:DTYPE".to_string())
    } else if !lacking.is_empty() {
        None
    } else if tract.contains("Sym(") && prepared.value_info_dropped == 0 {
        Some("likely cause: a symbolic dimension the export declares (in value_info or an output shape) that the input facts contradict".to_string())
    } else {
        None
    };
    if let Some(c) = cause {
        msg.push_str(&format!("\n{c}"));
    }
    if !lacking.is_empty() {
        msg.push_str(&format!(
            "\nhint: input{} {} ha{} no complete shape or type in the model; give {} with --input NAME=DIMS[:DTYPE] (e.g. --input {}=1,3,224,224:f32)",
            if lacking.len() == 1 { "" } else { "s" },
            lacking.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "),
            if lacking.len() == 1 { "s" } else { "ve" },
            if lacking.len() == 1 { "it" } else { "them" },
            lacking[0]
        ));
    }
    anyhow::anyhow!(msg)
}

fn guard_import<T>(located: &import::Located, f: impl FnOnce() -> T) -> Result<T> {
    neoc_runtime::guard::caught(f)
        .map_err(|why| anyhow::anyhow!("{}: tract failed while importing the model: {why}", located.rel))
}

/// The most elements a seeded verification input may have (1 GiB of f32):
/// a declared shape beyond is a mistake (`--input features=1e12,30`), not a
/// model to verify.
pub const MAX_SEEDED_ELEMENTS: usize = 1 << 28;

fn seeded_input(spec: &TensorSpec, rng: &mut SplitMix) -> Result<Tensor> {
    // symbolic dimensions (a batch) get 2, to exercise batching
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as usize,
            Dim::Symbol(_) => 2,
        })
        .collect();
    let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).filter(|n| *n <= MAX_SEEDED_ELEMENTS);
    let Some(n) = n else {
        bail!(
            "input `{}` is declared with shape {} ({} elements with the batch at 2); neoc verifies with inputs of that shape and allows at most {MAX_SEEDED_ELEMENTS}\nhint: check the shape given with --input, in model.json, or in the model",
            spec.name,
            neoc_bundle::manifest::shape_string(&spec.shape),
            shape.iter().map(|d| *d as f64).product::<f64>()
        );
    };
    let dt = neoc_runtime::tensors::datum_type(&spec.dtype).context("dtype")?;
    let t = match dt {
        DatumType::Bool => Tensor::from_shape(&shape, &(0..n).map(|_| rng.next() & 1 == 1).collect::<Vec<_>>())?,
        DatumType::F32 | DatumType::F64 | DatumType::F16 => {
            Tensor::from_shape(&shape, &(0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect::<Vec<_>>())?
                .cast_to_dt(dt)?
                .into_owned()
        }
        // a few distinct words, so that lookups and comparisons see repeats
        DatumType::String => neoc_runtime::tensors::string_tensor(
            &shape,
            (0..n).map(|_| ["a", "b", "neoc", "", "é", "x y"][(rng.next() % 6) as usize].to_string()).collect(),
        )?,
        _ => Tensor::from_shape(&shape, &(0..n).map(|_| (rng.next() % 8) as i64).collect::<Vec<_>>())?
            .cast_to_dt(dt)?
            .into_owned(),
    };
    Ok(t)
}

fn named(specs: &[TensorSpec], tensors: &[Tensor]) -> Result<Vec<NamedTensor>> {
    specs.iter().zip(tensors).map(|(s, t)| NamedTensor::from_tensor(&s.name, t)).collect()
}

/// Runs the reference (the imported model, before optimisation or layout)
/// and the compiled model exactly as the runtime will load it, on the
/// model's own test data when it ships some, else on seeded inputs; compares
/// them, and compares the compiled model with the test data's expected outputs
/// (computed by another engine) when present.
fn verify(
    lowered: &Lowered,
    manifest: &Manifest,
    located: &Located,
    opts: &Options,
    precision: Precision,
    cross: Option<&CrossCheck>,
) -> Result<(Verification, TestVectors, neoc_runtime::Model)> {
    let (atol, rtol) = (manifest.verification.atol, manifest.verification.rtol);
    // fp16 where the host has no fp16 arithmetic is emulated (~1000x slower):
    // one case bounds the time, and the manifest says so
    let emulated = precision == Precision::Fp16 && !Host::detect().features.contains(&"fp16");
    let max_cases = if emulated { 1 } else { usize::MAX };
    let mut compiled = neoc_runtime::Model::from_parts(
        manifest.clone(),
        &lowered.model_bytes,
        None,
        &neoc_runtime::OpenOptions::default(),
    )
    .map_err(|e| anyhow::anyhow!("the runtime cannot load the compiled model: {e}"))?;

    // inputs (and, from test data, independent expected outputs)
    let mut cases: Vec<(Vec<Tensor>, Option<Vec<Tensor>>)> = Vec::new();
    let mut source = "seeded";
    for set in &located.test_sets {
        let ins = set.inputs.iter().map(|p| import::load_tensor_pb(p).map(|t| t.1)).collect::<Result<Vec<_>>>()?;
        let outs = set.outputs.iter().map(|p| import::load_tensor_pb(p).map(|t| t.1)).collect::<Result<Vec<_>>>()?;
        let ins: Vec<Tensor> = ins
            .into_iter()
            .zip(&manifest.inputs)
            .map(|(t, s)| Ok(t.cast_to_dt(neoc_runtime::tensors::datum_type(&s.dtype).context("dtype")?)?.into_owned()))
            .collect::<Result<_>>()?;
        let refused = if ins.len() != manifest.inputs.len() {
            Some(format!("{} inputs, the model takes {}", ins.len(), manifest.inputs.len()))
        } else {
            compiled.run(ins.clone()).err().map(|e| e.to_string())
        };
        if let Some(why) = refused {
            bail!(
                "{}: its inputs do not fit the model's inputs ({}): {why}",
                set.name,
                neoc_runtime::codec::describe_inputs(&manifest.inputs)
            );
        }
        source = "test_data_set";
        cases.push((ins, (outs.len() == manifest.outputs.len()).then_some(outs)));
    }
    if cases.is_empty() {
        let mut rng = SplitMix(0x6e656f63);
        for _ in 0..opts.seeded_cases {
            cases.push(((lowered.seeded)(&mut rng)?, None));
        }
    }

    cases.truncate(max_cases);
    let mut v = manifest.verification.clone();
    v.inputs = source.into();
    v.cases = cases.len();
    let mut failures = Vec::new();
    let mut independent: Option<IndependentCheck> = None;
    let mut vectors = TestVectors { source: String::new(), atol, rtol, cases: Vec::new() };
    let mut all_independent = true;
    let mut by_engine: Option<IndependentCheck> = None;
    let mut cross_note: Option<String> = match cross {
        Some(CrossCheck::Missing(why)) => Some(format!("only neoc's own import was the reference ({why})")),
        _ => None,
    };
    for (i, (ins, expected)) in cases.iter().enumerate() {
        let seeded_hint = |e: anyhow::Error| {
            if source == "seeded" {
                anyhow::anyhow!("{e:#}\nhint: these were seeded random inputs, which may be invalid for this model; ship representative inputs as test_data_set_*/input_*.pb in the model tarball")
            } else {
                e
            }
        };
        let want = (lowered.reference)(ins).map_err(seeded_hint)?;
        let got =
            compiled.run(ins.clone()).map_err(|e| seeded_hint(anyhow::anyhow!("running the compiled model: {e}")))?;
        let (abs, rel) = compare_all(i, &got, &want, &manifest.outputs, (atol, rtol), "reference", &mut failures)?;
        v.max_abs_error = v.max_abs_error.max(abs);
        v.max_rel_error = v.max_rel_error.max(rel);
        if let (Some(CrossCheck::Ready { engine, source }), None) = (cross, &cross_note) {
            match engine.run(ins.clone()) {
                Ok(theirs) if theirs.len() == got.len() => {
                    let ind = by_engine.get_or_insert(IndependentCheck {
                        source: source.clone(),
                        cases: 0,
                        max_abs_error: 0.0,
                        max_rel_error: 0.0,
                    });
                    ind.cases += 1;
                    let theirs: Vec<Tensor> = got
                        .iter()
                        .zip(&theirs)
                        .map(|(g, w)| Ok(w.cast_to_dt(g.datum_type())?.into_owned()))
                        .collect::<Result<_>>()?;
                    let (abs, rel) =
                        compare_all(i, &got, &theirs, &manifest.outputs, (atol, rtol), source, &mut failures)?;
                    ind.max_abs_error = ind.max_abs_error.max(abs);
                    ind.max_rel_error = ind.max_rel_error.max(rel);
                }
                Ok(theirs) => {
                    cross_note = Some(format!(
                        "not compared with {source}: it gives {} outputs, the bundle {}",
                        theirs.len(),
                        got.len()
                    ))
                }
                Err(e) => {
                    cross_note = Some(format!(
                        "not compared with {source}: {}",
                        format!("{e:#}").lines().next().unwrap_or_default()
                    ))
                }
            }
        }
        if let Some(exp) = expected {
            let ind = independent.get_or_insert(IndependentCheck {
                source: format!(
                    "expected outputs shipped with the model ({})",
                    located.test_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
                cases: 0,
                max_abs_error: 0.0,
                max_rel_error: 0.0,
            });
            ind.cases += 1;
            let exp_cast: Vec<Tensor> = got
                .iter()
                .zip(exp)
                .map(|(g, w)| Ok(w.cast_to_dt(g.datum_type())?.into_owned()))
                .collect::<Result<_>>()?;
            let (abs, rel) = compare_all(
                i,
                &got,
                &exp_cast,
                &manifest.outputs,
                (atol, rtol),
                "shipped expected output",
                &mut failures,
            )?;
            ind.max_abs_error = ind.max_abs_error.max(abs);
            ind.max_rel_error = ind.max_rel_error.max(rel);
            vectors.cases.push(TestCase {
                inputs: named(&manifest.inputs, ins)?,
                outputs: named(&manifest.outputs, &exp_cast)?,
            });
        } else {
            all_independent = false;
            vectors
                .cases
                .push(TestCase { inputs: named(&manifest.inputs, ins)?, outputs: named(&manifest.outputs, &want)? });
        }
    }
    vectors.source = if all_independent && independent.is_some() {
        "expected outputs shipped with the model".into()
    } else {
        v.reference.clone()
    };
    // JSON has no infinity: an unbounded error is recorded as f64::MAX
    let finite = |x: &mut f64| {
        if !x.is_finite() {
            *x = f64::MAX;
        }
    };
    finite(&mut v.max_abs_error);
    finite(&mut v.max_rel_error);
    if let Some(ind) = &mut independent {
        finite(&mut ind.max_abs_error);
        finite(&mut ind.max_rel_error);
    }
    v.independent = independent;
    if let Some(ind) = &mut by_engine {
        finite(&mut ind.max_abs_error);
        finite(&mut ind.max_rel_error);
    }
    if cross_note.is_some() {
        by_engine = None;
    }
    v.independent_engine = by_engine;
    let mut notes: Vec<String> = cross_note.into_iter().collect();
    if emulated {
        notes.push(format!(
            "fp16 emulated on this {} host (no fp16 arithmetic): verified on {} case(s) only; the target's fp16 kernels were not exercised",
            v.host, v.cases
        ));
    }
    if !notes.is_empty() {
        v.note = Some(notes.join("; "));
    }
    if failures.is_empty() {
        v.status = "passed".into();
    } else if opts.allow_mismatch {
        v.status = "mismatch-allowed".into();
    } else {
        return Err(Mismatch(format!(
            "beyond tolerance (atol {:.1e}, rtol {:.1e}):\n  {}",
            atol,
            rtol,
            failures.join("\n  ")
        ))
        .into());
    }
    // what the bundle keeps: every case, or one where a case's inputs are
    // large (an image model's), since each load of the self-test reads them
    if vectors.cases.first().is_some_and(|c| TestVectors::input_bytes(c) > LARGE_CASE_BYTES) {
        vectors.cases.truncate(1);
    }
    compiled.set_test_vectors(vectors.clone());
    Ok((v, vectors, compiled))
}

/// Above this many bytes of inputs per case, a bundle keeps one test case
/// (verification still runs every case).
pub const LARGE_CASE_BYTES: usize = 1 << 20;

/// Compares one case's outputs with `want` (from `what`), output by output;
/// records every output beyond tolerance in `failures`. Returns the largest
/// absolute and relative errors.
fn compare_all(
    case: usize,
    got: &[Tensor],
    want: &[Tensor],
    specs: &[TensorSpec],
    (atol, rtol): (f64, f64),
    what: &str,
    failures: &mut Vec<String>,
) -> Result<(f64, f64)> {
    let (mut abs, mut rel) = (0f64, 0f64);
    for ((g, w), spec) in got.iter().zip(want).zip(specs) {
        let c = compare(g, w, atol, rtol).with_context(|| format!("case {case}, output `{}` vs {what}", spec.name))?;
        abs = abs.max(c.max_abs);
        rel = rel.max(c.max_rel);
        if !c.within {
            failures.push(format!(
                "case {case}, output `{}`: compiled vs {what} max abs error {:.3e}",
                spec.name, c.max_abs
            ));
        }
    }
    Ok((abs, rel))
}

/// The default bundle file name: `NAME-VERSION.TARGET.neo`.
pub fn default_output(m: &Manifest) -> PathBuf {
    PathBuf::from(format!("{}-{}.{}.neo", m.model.name, m.model.version, m.target.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_engine_must_be_faster_beyond_margin_and_spread() {
        let tract = (EngineKind::Tract, Precision::Fp32);
        let ov = (EngineKind::Openvino, Precision::Fp32);
        let with = |t: (f64, f64), o: (f64, f64)| {
            choose_measured(&[tract, ov], move |p: &Pair| Some(if *p == tract { t } else { o }))
        };
        // 0.6% faster: noise, the target's first engine stays
        let (c, why) = with((1000.0, 5.0), (994.0, 5.0));
        assert_eq!(c, tract);
        assert!(why.contains("within the 5% margin"), "{why}");
        // 20% faster but the spread is wider than the gain
        assert_eq!(with((1000.0, 150.0), (800.0, 100.0)).0, tract);
        // 20% faster, steady: chosen, with the figures
        let (c, why) = with((1000.0, 10.0), (800.0, 10.0));
        assert_eq!(c, ov);
        assert!(why.contains("20% faster") && why.contains("800 vs 1000"), "{why}");
        // slower: the first engine, said so
        let (c, why) = with((800.0, 10.0), (1000.0, 10.0));
        assert_eq!(c, tract);
        assert!(why.contains("the fastest"), "{why}");
    }
}
