//! The compile pipeline: import → coverage → passes → serialize → verify →
//! package. Each stage is named; the driver reports them as they run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use neoc_bundle::container;
use neoc_bundle::manifest::*;
use neoc_runtime::engine::{ENGINE_NAME, MODEL_FORMAT, TRACT_VERSION};
use neoc_runtime::tensors::{compare, dtype_name, NamedTensor, TestCase, TestVectors};
use neoc_targets::{Host, Target};
use tract_onnx::prelude::*;

use crate::import::{self, Framework, ImportError, InputConfig, Located, Unsupported};
use crate::printer::Printer;
use crate::source::Source;

/// The named stages, in order.
pub const STAGES: &[&str] = &["fetch", "import", "coverage", "passes", "serialize", "verify", "package"];

pub struct Options {
    pub target: &'static Target,
    pub framework: Option<Framework>,
    pub inputs: BTreeMap<String, InputConfig>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub atol: f64,
    pub rtol: f64,
    pub allow_mismatch: bool,
    pub seeded_cases: usize,
    pub created: u64,
}

/// What a successful compile produced.
pub struct Compiled {
    pub manifest: Manifest,
    pub files: Vec<(String, Vec<u8>)>,
    pub stage_ms: Vec<(&'static str, u128)>,
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

pub fn compile(src: &Source, opts: &Options, printer: &Printer, fetch_ms: u128) -> Result<Compiled> {
    let mut timer = Timer { printer, stage_ms: vec![("fetch", fetch_ms)], current: None };
    timer.start("import", "importing");
    let located = import::locate(src, opts.framework)?;
    let mut inputs = located.model_json.clone();
    for (k, v) in &opts.inputs {
        inputs.insert(k.clone(), v.clone());
    }
    let (reference, mut model, registries) = match located.framework {
        Framework::Onnx => {
            let inference = match import::onnx(&located, &inputs, opts.target.name) {
                Ok(m) => m,
                Err(e) => {
                    timer.finish();
                    return Err(e);
                }
            };
            timer.start("passes", "typing and decluttering");
            let typed = inference.into_typed().map_err(|e| {
                anyhow::anyhow!("type and shape inference failed: {e:#}\nhint: give input shapes and types with --input NAME=DIMS[:DTYPE] (e.g. --input image=1,3,224,224:f32)")
            })?;
            (typed.clone(), typed, vec!["tract_onnx".to_string()])
        }
        Framework::Nnef => {
            if !opts.inputs.is_empty() {
                bail!("--input is not supported for NNEF models: their input shapes are part of graph.nnef");
            }
            let typed = import::nnef(&located)?;
            timer.start("passes", "decluttering");
            (typed.clone(), typed, vec!["tract_onnx".to_string()])
        }
        other => return Err(import::not_yet(other).into()),
    };
    model.declutter().context("decluttering the model")?;
    check_io_types(&model)?;

    timer.start("coverage", "checking the bundle format can carry every operator");
    let nnef = neoc_runtime::engine::nnef();
    let unserializable = unserializable_nodes(&model, &nnef);
    if !unserializable.is_empty() {
        timer.finish();
        return Err(ImportError::UnsupportedOps { target: opts.target.name.into(), list: unserializable }.into());
    }

    timer.start("serialize", "writing the NNEF model");
    let nnef_tar = nnef
        .write_to_tar_with_config(&model, Vec::new(), false, true)
        .map_err(|e| anyhow::anyhow!("the model cannot be written as NNEF: {e:#}"))?;
    let nnef_tar = canonical_tar(&nnef_tar).context("re-encoding the NNEF archive")?;

    let name = opts.name.clone().unwrap_or_else(|| src.name.clone());
    let version = opts.version.clone().unwrap_or_else(|| src.version.clone());
    let mut manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model: ModelInfo {
            name,
            version,
            framework: located.framework.as_str().into(),
            source: src.given.clone(),
            source_digest: src.digest.clone(),
            source_file: located.rel.clone(),
        },
        target: TargetInfo {
            name: opts.target.name.into(),
            triple: opts.target.triple.into(),
            arch: opts.target.arch.as_str().into(),
            features: opts.target.features.iter().map(|s| s.to_string()).collect(),
            accelerator: opts.target.accelerator.as_str().into(),
        },
        engine: EngineInfo {
            name: ENGINE_NAME.into(),
            version: TRACT_VERSION.into(),
            model_file: "model.nnef.tar".into(),
            model_format: MODEL_FORMAT.into(),
            registries,
        },
        compiler: ToolInfo { name: "neoc".into(), version: env!("CARGO_PKG_VERSION").into() },
        min_runtime_version: env!("CARGO_PKG_VERSION").into(),
        created: opts.created,
        inputs: specs(&model, &model.input_outlets()?)?,
        outputs: specs(&model, &model.output_outlets()?)?,
        verification: Verification {
            status: "pending".into(),
            reference: String::new(),
            host: Host::detect().arch.to_string(),
            inputs: String::new(),
            cases: 0,
            max_abs_error: 0.0,
            max_rel_error: 0.0,
            atol: opts.atol,
            rtol: opts.rtol,
            independent: None,
        },
        test_vectors: Some("test_vectors.json".into()),
        files: vec![],
    };

    timer.start("verify", "comparing the compiled model with the source");
    let (verification, vectors) = verify(&reference, &nnef_tar, &manifest, &located, opts)?;
    manifest.verification = verification;

    timer.start("package", "packaging");
    let mut tv = serde_json::to_vec(&vectors)?;
    tv.push(b'\n');
    let files = vec![("model.nnef.tar".to_string(), nnef_tar), ("test_vectors.json".to_string(), tv)];
    manifest.files = container::file_entries(&files);
    timer.finish();
    Ok(Compiled { manifest, files, stage_ms: timer.stage_ms })
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
        if node.op_is::<ops::source::TypedSource>() || node.op_is::<ops::konst::Const>() || node.op_is::<ops::identity::Identity>() {
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
struct SplitMix(u64);

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

fn seeded_input(spec: &TensorSpec, rng: &mut SplitMix) -> Result<Tensor> {
    // symbolic dimensions (a batch) get 2, to exercise batching
    let shape: Vec<usize> = spec.shape.iter().map(|d| match d { Dim::Fixed(n) => *n as usize, Dim::Symbol(_) => 2 }).collect();
    let n: usize = shape.iter().product();
    let dt = neoc_runtime::tensors::datum_type(&spec.dtype).context("dtype")?;
    let t = match dt {
        DatumType::Bool => Tensor::from_shape(&shape, &(0..n).map(|_| rng.next() & 1 == 1).collect::<Vec<_>>())?,
        DatumType::F32 | DatumType::F64 | DatumType::F16 => {
            Tensor::from_shape(&shape, &(0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect::<Vec<_>>())?.cast_to_dt(dt)?.into_owned()
        }
        _ => Tensor::from_shape(&shape, &(0..n).map(|_| (rng.next() % 8) as i64).collect::<Vec<_>>())?.cast_to_dt(dt)?.into_owned(),
    };
    Ok(t)
}

fn named(specs: &[TensorSpec], tensors: &[Tensor]) -> Result<Vec<NamedTensor>> {
    specs.iter().zip(tensors).map(|(s, t)| NamedTensor::from_tensor(&s.name, t)).collect()
}

/// Runs the reference (the imported model, unoptimized) and the compiled
/// model exactly as the runtime will load it, on the model's own test data
/// when it ships some, else on seeded inputs; compares them, and compares the
/// compiled model with the test data's expected outputs (computed by another
/// engine) when present.
fn verify(
    reference: &TypedModel,
    nnef_tar: &[u8],
    manifest: &Manifest,
    located: &Located,
    opts: &Options,
) -> Result<(Verification, TestVectors)> {
    let compiled = neoc_runtime::Model::from_parts(manifest.clone(), nnef_tar, None)
        .map_err(|e| anyhow::anyhow!("the runtime cannot load the compiled model: {e:#}"))?;
    let reference_plan = reference.clone().into_runnable().context("preparing the reference model")?;

    // inputs (and, from test data, independent expected outputs)
    let mut cases: Vec<(Vec<Tensor>, Option<Vec<Tensor>>)> = Vec::new();
    let mut source = "seeded";
    for set in &located.test_sets {
        let ins = set.inputs.iter().map(|p| import::load_tensor_pb(p).map(|t| t.1)).collect::<Result<Vec<_>>>()?;
        let outs = set.outputs.iter().map(|p| import::load_tensor_pb(p).map(|t| t.1)).collect::<Result<Vec<_>>>()?;
        if ins.len() != manifest.inputs.len() || compiled.run(ins.clone()).is_err() {
            bail!(
                "{}: its inputs do not fit the model's inputs ({})",
                set.name,
                neoc_runtime::request::describe_inputs(&manifest.inputs)
            );
        }
        source = "test_data_set";
        cases.push((ins, (outs.len() == manifest.outputs.len()).then_some(outs)));
    }
    if cases.is_empty() {
        let mut rng = SplitMix(0x6e656f63);
        for _ in 0..opts.seeded_cases {
            cases.push((manifest.inputs.iter().map(|s| seeded_input(s, &mut rng)).collect::<Result<_>>()?, None));
        }
    }

    let mut v = manifest.verification.clone();
    v.inputs = source.into();
    v.cases = cases.len();
    v.reference = format!("{} model imported by tract {TRACT_VERSION}, unoptimized", manifest.model.framework);
    let mut failures = Vec::new();
    let mut independent: Option<IndependentCheck> = None;
    let mut vectors = TestVectors {
        source: String::new(),
        atol: opts.atol,
        rtol: opts.rtol,
        cases: Vec::new(),
    };
    let mut all_independent = true;
    for (i, (ins, expected)) in cases.iter().enumerate() {
        let want: Vec<Tensor> = reference_plan
            .run(ins.iter().cloned().map(|t| t.into_tvalue()).collect())
            .context("running the reference model")?
            .into_iter()
            .map(|t| t.into_tensor())
            .collect();
        let got = compiled.run(ins.clone()).map_err(|e| anyhow::anyhow!("running the compiled model: {e}"))?;
        for ((g, w), spec) in got.iter().zip(&want).zip(&manifest.outputs) {
            let c = compare(g, w, opts.atol, opts.rtol).with_context(|| format!("case {i}, output `{}`", spec.name))?;
            v.max_abs_error = v.max_abs_error.max(c.max_abs);
            v.max_rel_error = v.max_rel_error.max(c.max_rel);
            if !c.within {
                failures.push(format!("case {i}, output `{}`: compiled vs reference max abs error {:.3e}", spec.name, c.max_abs));
            }
        }
        if let Some(exp) = expected {
            let ind = independent.get_or_insert(IndependentCheck {
                source: format!("expected outputs shipped with the model ({})", located.test_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")),
                cases: 0,
                max_abs_error: 0.0,
                max_rel_error: 0.0,
            });
            ind.cases += 1;
            for ((g, w), spec) in got.iter().zip(exp).zip(&manifest.outputs) {
                let w = w.cast_to_dt(g.datum_type())?.into_owned();
                let c = compare(g, &w, opts.atol, opts.rtol).with_context(|| format!("case {i}, output `{}` vs shipped expected output", spec.name))?;
                ind.max_abs_error = ind.max_abs_error.max(c.max_abs);
                ind.max_rel_error = ind.max_rel_error.max(c.max_rel);
                if !c.within {
                    failures.push(format!("case {i}, output `{}`: compiled vs shipped expected output max abs error {:.3e}", spec.name, c.max_abs));
                }
            }
            vectors.cases.push(TestCase { inputs: named(&manifest.inputs, ins)?, outputs: named(&manifest.outputs, exp)? });
        } else {
            all_independent = false;
            vectors.cases.push(TestCase { inputs: named(&manifest.inputs, ins)?, outputs: named(&manifest.outputs, &want)? });
        }
    }
    vectors.source = if all_independent && independent.is_some() {
        "expected outputs shipped with the model".into()
    } else {
        v.reference.clone()
    };
    for x in [&mut v.max_abs_error, &mut v.max_rel_error] {
        if !x.is_finite() {
            *x = f64::MAX;
        }
    }
    if let Some(ind) = &mut independent {
        for x in [&mut ind.max_abs_error, &mut ind.max_rel_error] {
            if !x.is_finite() {
                *x = f64::MAX;
            }
        }
    }
    v.independent = independent;
    if failures.is_empty() {
        v.status = "passed".into();
    } else if opts.allow_mismatch {
        v.status = "mismatch-allowed".into();
    } else {
        return Err(Mismatch(format!("beyond tolerance (atol {:.1e}, rtol {:.1e}):\n  {}", opts.atol, opts.rtol, failures.join("\n  "))).into());
    }
    Ok((v, vectors))
}

/// The default bundle file name: `NAME-VERSION.TARGET.neo`.
pub fn default_output(m: &Manifest) -> PathBuf {
    PathBuf::from(format!("{}-{}.{}.neo", m.model.name, m.model.version, m.target.name))
}
