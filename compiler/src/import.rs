//! Import: find the model file in a source, detect its framework, read its
//! input configuration, run the coverage pre-flight, and translate it into a
//! tract typed model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::framework::Framework as _;
use tract_onnx::tract_hir::infer::Factoid;

use crate::source::Source;

/// Model frameworks neoc recognises (not all of which it compiles yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Framework {
    Onnx,
    Nnef,
    Tflite,
    Xgboost,
    Lightgbm,
}

impl Framework {
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Onnx => "onnx",
            Framework::Nnef => "nnef",
            Framework::Tflite => "tflite",
            Framework::Xgboost => "xgboost",
            Framework::Lightgbm => "lightgbm",
        }
    }

    fn from_model_json(s: &str) -> Option<Framework> {
        match s.to_ascii_lowercase().as_str() {
            "onnx" => Some(Framework::Onnx),
            "nnef" => Some(Framework::Nnef),
            "tflite" => Some(Framework::Tflite),
            "xgboost" => Some(Framework::Xgboost),
            "lightgbm" => Some(Framework::Lightgbm),
            _ => None,
        }
    }
}

/// One input's configuration (Neo's DataInputConfig entry, or `--input`).
#[derive(Clone, Debug, PartialEq)]
pub struct InputConfig {
    /// `None` for a symbolic dimension (a batch size chosen per request).
    pub shape: Vec<Option<usize>>,
    pub symbols: Vec<Option<String>>,
    pub dtype: Option<DatumType>,
    /// A value the input is pinned to: it becomes a constant of the graph
    /// (and no input of the bundle), so that what depends on it folds away.
    pub value: Option<Value>,
    /// The short form with one number (`sr=16000:i64`): the input's value
    /// when the model declares it a scalar, else its one dimension.
    pub single: Option<Value>,
}

impl InputConfig {
    fn new(dtype: Option<DatumType>) -> InputConfig {
        InputConfig { shape: vec![], symbols: vec![], dtype, value: None, single: None }
    }
}

/// Parses `NAME=DIMS[:DTYPE]` (e.g. `features=N,30:f32`) or a Neo-style JSON
/// object (`{"data": [1,3,224,224]}`) into named input configurations.
pub fn parse_input_flag(s: &str) -> Result<Vec<(String, InputConfig)>> {
    if s.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(s).with_context(|| format!("--input {s}: not valid JSON"))?;
        return parse_data_input_config(&v).with_context(|| format!("--input {s}"));
    }
    let (name, rest) = s.split_once('=').with_context(|| {
        format!("--input {s:?}: expected NAME=DIMS[:DTYPE], e.g. features=N,30:f32 or image=1,3,224,224")
    })?;
    let (dims, dtype) = match rest.split_once(':') {
        Some((d, t)) => (d, Some(parse_dtype(t).with_context(|| format!("--input {s}"))?)),
        None => (rest, None),
    };
    if name.is_empty() {
        bail!("--input {s:?}: expected NAME=DIMS[:DTYPE]");
    }
    let mut cfg = InputConfig::new(dtype);
    // a scalar: `sr=:i64` or `sr=[]:i64`
    if dims.trim().is_empty() || dims.trim() == "[]" {
        if cfg.dtype.is_none() && dims.trim().is_empty() {
            bail!("--input {s:?}: no dimensions; a scalar input is NAME=:DTYPE or NAME=[]:DTYPE (e.g. sr=:i64)");
        }
        return Ok(vec![(name.to_string(), cfg)]);
    }
    // one number: a scalar's value, or the one dimension of a rank-1 input
    if !dims.contains(',') {
        if let Ok(n) = dims.trim().parse::<serde_json::Number>() {
            cfg.single = Some(Value::Number(n));
        }
        if dims.trim().parse::<usize>().is_err() && cfg.single.is_some() {
            return Ok(vec![(name.to_string(), cfg)]);
        }
    }
    for d in dims.split(',') {
        let d = d.trim();
        match d.parse::<usize>() {
            Ok(n) => {
                cfg.shape.push(Some(n));
                cfg.symbols.push(None);
            }
            Err(_) if !d.is_empty() && d.chars().all(|c| c.is_ascii_alphabetic() || c == '_') => {
                cfg.shape.push(None);
                cfg.symbols.push(Some(d.to_string()));
            }
            Err(_) => bail!("--input {s:?}: dimension `{d}` is neither a number nor a symbol like N"),
        }
    }
    Ok(vec![(name.to_string(), cfg)])
}

fn parse_dtype(t: &str) -> Result<DatumType> {
    match neoc_bundle::dtype::DType::from_user(t) {
        Some(d) => Ok(neoc_runtime::tensors::datum_type_of(d)),
        None => bail!(
            "unknown dtype `{}` (use f32, f64, f16, i64, i32, i16, i8, u8, u16, u32, u64 or bool)",
            t.to_ascii_lowercase()
        ),
    }
}

static NO_DIMS: Value = Value::Array(Vec::new());

/// Neo's DataInputConfig: `{"name": [dims]}`, where a dim may be a number, or
/// `"N"`/`-1`/`null` for a symbolic batch; an entry may also be
/// `{"shape": [...], "dtype": "f32"}`. Neo also accepts the whole thing as a
/// JSON string.
pub fn parse_data_input_config(v: &Value) -> Result<Vec<(String, InputConfig)>> {
    let v = match v {
        Value::String(s) => serde_json::from_str(s).context("DataInputConfig string is not JSON")?,
        other => other.clone(),
    };
    let Value::Object(map) = v else { bail!("DataInputConfig must be an object of input names to shapes") };
    let mut out = Vec::new();
    for (name, spec) in map {
        let (shape, dtype) = match &spec {
            Value::Array(_) => (&spec, None),
            Value::Object(o) if o.contains_key("value") && !o.contains_key("shape") => {
                (&NO_DIMS, o.get("dtype").and_then(|d| d.as_str()).map(parse_dtype).transpose()?)
            }
            Value::Object(o) => (
                o.get("shape").with_context(|| format!("input `{name}`: missing \"shape\""))?,
                o.get("dtype").and_then(|d| d.as_str()).map(parse_dtype).transpose()?,
            ),
            _ => bail!("input `{name}`: expected a shape array"),
        };
        let Value::Array(dims) = shape else { bail!("input `{name}`: shape must be an array") };
        let mut cfg = InputConfig::new(dtype);
        cfg.value = spec.get("value").cloned();
        for d in dims {
            match d {
                Value::Number(n) if n.as_u64().is_some() => {
                    cfg.shape.push(Some(n.as_u64().unwrap() as usize));
                    cfg.symbols.push(None);
                }
                Value::Number(n) if n.as_i64() == Some(-1) => {
                    cfg.shape.push(None);
                    cfg.symbols.push(None);
                }
                Value::Null => {
                    cfg.shape.push(None);
                    cfg.symbols.push(None);
                }
                Value::String(s) if s.chars().all(|c| c.is_ascii_alphabetic() || c == '_') && !s.is_empty() => {
                    cfg.shape.push(None);
                    cfg.symbols.push(Some(s.clone()));
                }
                other => bail!("input `{name}`: dimension {other} is not a number or a symbol"),
            }
        }
        out.push((name, cfg));
    }
    Ok(out)
}

/// The model file chosen in a source, with what came beside it.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    /// Relative to the source root, for the manifest.
    pub rel: String,
    pub framework: Framework,
    pub model_json: BTreeMap<String, InputConfig>,
    pub test_sets: Vec<TestSet>,
}

/// ONNX model-zoo style `test_data_set_N/{input,output}_K.pb`.
#[derive(Debug, Clone)]
pub struct TestSet {
    pub name: String,
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
}

/// True for the files of a tarball that [`locate`] reads: what looks like a
/// model file, `model.json`, and ONNX-style test sets.
pub fn needed(path: &Path, head: &[u8]) -> bool {
    let parent = path.parent().and_then(|p| p.file_name()).map(|p| p.to_string_lossy().to_string());
    path.file_name().is_some_and(|n| n == "model.json")
        || parent.is_some_and(|p| p.starts_with("test_data_set_"))
        || detect(path, head).is_some()
}

/// The framework of a model file, from its name and first bytes (`head`).
fn detect(path: &Path, head: &[u8]) -> Option<Framework> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".onnx") {
        return Some(Framework::Onnx);
    }
    if name.ends_with(".nnef.tgz")
        || name.ends_with(".nnef.tar")
        || name.ends_with(".nnef.tar.gz")
        || name == "graph.nnef"
    {
        return Some(Framework::Nnef);
    }
    if name.ends_with(".tflite") {
        return Some(Framework::Tflite);
    }
    if name.starts_with("xgboost-model") || name.ends_with(".ubj") {
        return Some(Framework::Xgboost);
    }
    if head.len() >= 8 && &head[4..8] == b"TFL3" {
        return Some(Framework::Tflite);
    }
    let text = String::from_utf8_lossy(head);
    if name.ends_with(".json") && text.contains("\"learner\"") {
        return Some(Framework::Xgboost);
    }
    if text.starts_with("tree\n") || (text.contains("\nversion=v") && text.contains("num_class=")) {
        return Some(Framework::Lightgbm);
    }
    if name.ends_with(".pb") || name.ends_with(".json") || name.ends_with(".md") || name.ends_with(".txt") {
        return None;
    }
    // protobuf ModelProto starts with ir_version (field 1, varint)
    if head.first() == Some(&0x08) {
        return Some(Framework::Onnx);
    }
    None
}

/// Finds the model file in a source.
pub fn locate(src: &Source, forced: Option<Framework>) -> Result<Located> {
    let root = src.root();
    let mut model_json = BTreeMap::new();
    let mut json_framework = None;
    let mut test_sets: BTreeMap<String, TestSet> = BTreeMap::new();
    let mut candidates = Vec::new();
    for listed in &src.listing {
        let rel = &listed.path;
        let file_name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let parent = rel.parent().and_then(|p| p.file_name()).map(|p| p.to_string_lossy().to_string());
        if file_name == "model.json" {
            let v: Value = serde_json::from_slice(&std::fs::read(root.join(rel))?)
                .with_context(|| format!("{}: model.json is not valid JSON", src.given))?;
            if let Some(cfg) = v.get("DataInputConfig").or_else(|| v.get("data_input_config")) {
                for (name, c) in parse_data_input_config(cfg)
                    .with_context(|| format!("{}: model.json DataInputConfig", src.given))?
                {
                    model_json.insert(name, c);
                }
            }
            json_framework =
                v.get("Framework").or_else(|| v.get("framework")).and_then(|f| f.as_str()).map(String::from);
            continue;
        }
        if let Some(set) = parent.filter(|p| p.starts_with("test_data_set_")) {
            let entry =
                test_sets.entry(set.clone()).or_insert_with(|| TestSet { name: set, inputs: vec![], outputs: vec![] });
            if file_name.starts_with("input_") && file_name.ends_with(".pb") {
                entry.inputs.push(root.join(rel));
            } else if file_name.starts_with("output_") && file_name.ends_with(".pb") {
                entry.outputs.push(root.join(rel));
            }
            continue;
        }
        if let Some(fw) = detect(rel, &listed.head) {
            candidates.push((rel.clone(), fw));
        } else if let Some(fw) = forced.filter(|_| src.listing.len() == 1) {
            candidates.push((rel.clone(), fw));
        }
    }
    let (rel, detected) = match candidates.as_slice() {
        [] => bail!(
            "{}: no model file found (looked for *.onnx, *.nnef.tgz, *.tflite, xgboost-model*, LightGBM text models){}",
            src.given,
            if src.listing.is_empty() {
                String::new()
            } else {
                format!(
                    "; it holds: {}",
                    src.listing.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            }
        ),
        [one] => one.clone(),
        many => bail!(
            "{}: several model files ({}); neoc compiles one model per tarball",
            src.given,
            many.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let framework = match (forced, json_framework.as_deref().and_then(Framework::from_model_json)) {
        (Some(f), _) => f,
        (None, Some(f)) if f != detected => {
            bail!(
                "{}: model.json says the framework is {}, but {} looks like {}\nhint: pass --framework to choose",
                src.given,
                f.as_str(),
                rel.display(),
                detected.as_str()
            )
        }
        _ => detected,
    };
    for set in test_sets.values_mut() {
        set.inputs.sort();
        set.outputs.sort();
    }
    Ok(Located {
        path: root.join(&rel),
        rel: rel.strip_prefix("model").unwrap_or(&rel).display().to_string(),
        framework,
        model_json,
        test_sets: test_sets.into_values().filter(|s| !s.inputs.is_empty()).collect(),
    })
}

/// An operator the target cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub node: String,
    pub op: String,
    pub why: String,
}

/// Everything that can stop an import, with whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} unsupported operator{} for target {target}:\n{}", list.len(), if list.len() == 1 { "" } else { "s" }, format_list(list))]
    UnsupportedOps { target: String, list: Vec<Unsupported> },
    #[error("{0}")]
    NotYet(String),
}

fn format_list(list: &[Unsupported]) -> String {
    list.iter().map(|u| format!("  - node `{}`: {} ({})", u.node, u.op, u.why)).collect::<Vec<_>>().join("\n")
}

const TREE_OPS: &[&str] = &["TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"];

/// The error for a framework neoc recognises but has no importer for.
pub fn not_yet(framework: Framework) -> ImportError {
    ImportError::NotYet(match framework {
        Framework::Tflite => "TFLite import is not supported by this build yet (tract's TFLite importer lacks DEQUANTIZE, PRELU and more)\nhint: convert the model to ONNX (tf2onnx) and compile that".into(),
        other => format!("{} import is not supported by this build", other.as_str()),
    })
}

/// Reads an ONNX file's protobuf.
pub fn onnx_proto(located: &Located) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(&located.path).with_context(|| located.path.display().to_string())?;
    tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("{}: not a valid ONNX model ({e})", located.rel))
}

/// What the ONNX rewrites did (`onnx_prep`), for the manifest and the log.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `NAME` → `VALUE:DTYPE` of each input pinned to a value.
    pub pinned: BTreeMap<String, String>,
    /// How many `value_info` annotations were dropped.
    pub value_info_dropped: usize,
}

/// Resolves the one-number short form (`sr=16000:i64`) against the graph:
/// a value for an input declared scalar, a dimension otherwise.
pub fn resolve_single_numbers(graph: &pb::GraphProto, inputs: &mut BTreeMap<String, InputConfig>) -> Result<()> {
    let ranks = crate::onnx_prep::declared_ranks(graph);
    for (name, cfg) in inputs.iter_mut() {
        let Some(single) = cfg.single.take() else { continue };
        if ranks.get(name) == Some(&Some(0)) {
            cfg.value = Some(single);
            cfg.shape.clear();
            cfg.symbols.clear();
        } else if cfg.shape.is_empty() {
            bail!(
                "--input {name}={single}: `{single}` is not a whole number of elements, and `{name}` is not declared a scalar, so it cannot be its value\nhint: pin a tensor's value with the JSON form, e.g. --input '{{\"{name}\": {{\"shape\": [1], \"value\": [{single}]}}}}'"
            );
        }
    }
    Ok(())
}

/// ONNX import. Applies the rewrites of `onnx_prep` (pinned inputs, dropped
/// `value_info` once input facts are given, `If`s folded), lists every
/// operator the targets cannot run or the bundle cannot carry (all at once),
/// then translates with the input configuration applied.
pub fn onnx(
    located: &Located,
    proto: &mut pb::ModelProto,
    inputs: &mut BTreeMap<String, InputConfig>,
    target: &str,
) -> Result<(InferenceModel, Prepared)> {
    let mut onnx = tract_onnx::onnx();
    // LSTMs as one operator over the sequence, not tract's per-step Scan
    // (NEOC_LSTM=tract keeps tract's, for bench/recurrent's comparison)
    if std::env::var("NEOC_LSTM").as_deref() != Ok("tract") {
        crate::recurrent::register(&mut onnx.op_register);
    }
    let mut prepared = Prepared::default();
    {
        let graph = proto.graph.as_mut().with_context(|| format!("{}: ONNX model has no graph", located.rel))?;
        resolve_single_numbers(graph, inputs)?;
        prepared.pinned = crate::onnx_prep::pin_inputs(graph, inputs)?;
        inputs.retain(|_, c| c.value.is_none());
        // the export's annotations of intermediate values contradict pinned shapes
        if !inputs.is_empty() || !prepared.pinned.is_empty() {
            prepared.value_info_dropped = crate::onnx_prep::strip_value_info(graph);
        }
    }
    crate::onnx_prep::fold_ifs(proto, inputs)?;
    let graph = proto.graph.as_ref().expect("checked above");
    let list = coverage(graph, &onnx);
    if !list.is_empty() {
        return Err(ImportError::UnsupportedOps { target: target.into(), list }.into());
    }
    // the output shapes an export declares are symbolic too
    let onnx =
        if prepared.value_info_dropped > 0 || !inputs.is_empty() { onnx.with_ignore_output_shapes(true) } else { onnx };
    let dir = located.path.parent().and_then(|p| p.to_str());
    let parsed = onnx.parse(proto, dir).with_context(|| format!("{}: translating the ONNX graph", located.rel))?;
    if !parsed.unresolved_inputs.is_empty() {
        bail!("{}: graph refers to undefined values: {}", located.rel, parsed.unresolved_inputs.join(", "));
    }
    let mut model = parsed.model;
    apply_inputs(&mut model, inputs)?;
    Ok((model, prepared))
}

/// Inputs of an imported model with no type or no complete shape (a
/// symbolic dimension counts as known): the ones `--input` would help.
pub fn inputs_without_facts(model: &InferenceModel) -> Vec<String> {
    let Ok(outlets) = model.input_outlets() else { return vec![] };
    outlets
        .iter()
        .enumerate()
        .filter(|(ix, _)| {
            model
                .input_fact(*ix)
                .map(|f| f.datum_type.concretize().is_none() || f.shape.concretize().is_none())
                .unwrap_or(true)
        })
        .map(|(_, o)| model.node(o.node).name.clone())
        .collect()
}

/// The coverage pre-flight: every operator of the graph (and its
/// sub-graphs) that nothing can run or the bundle cannot carry, and every
/// `If` whose condition depends on data, all at once.
pub fn coverage(graph: &pb::GraphProto, onnx: &tract_onnx::Onnx) -> Vec<Unsupported> {
    let mut list = Vec::new();
    preflight(graph, onnx, &mut list);
    crate::onnx_prep::data_dependent_ifs(graph, &mut list);
    list
}

fn preflight(graph: &pb::GraphProto, onnx: &tract_onnx::Onnx, list: &mut Vec<Unsupported>) {
    for node in &graph.node {
        let name =
            if node.name.is_empty() { node.output.first().cloned().unwrap_or_default() } else { node.name.clone() };
        let op =
            if node.domain.is_empty() { node.op_type.clone() } else { format!("{}::{}", node.domain, node.op_type) };
        if TREE_OPS.contains(&node.op_type.as_str()) {
            list.push(Unsupported {
                node: name,
                op,
                why: "tree ensembles are compiled by neoc's trees engine, which takes graphs of one tree-ensemble operator (plus Identity/Cast/ZipMap) only".into(),
            });
        } else if node.domain == "com.microsoft" {
            list.push(Unsupported {
                node: name,
                op,
                why: "an onnxruntime contrib operator, which onnxruntime's graph optimizer writes (onnxruntime.transformers optimize_model, or a session saved with optimized_model_filepath); compile the model as exported, before that optimization".into(),
            });
        } else if !onnx.op_register.0.contains_key(&node.op_type) {
            list.push(Unsupported { node: name, op, why: "no implementation in the tract engine".into() });
        } else if let Some(why) = cannot_carry(node) {
            list.push(Unsupported { node: name, op, why: why.into() });
        }
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                preflight(g, onnx, list);
            }
            for g in &attr.graphs {
                preflight(g, onnx, list);
            }
        }
    }
}

/// Operators tract implements whose translation the bundle format (NNEF)
/// cannot carry, known from the node alone, so that the pre-flight reports
/// them with the unimplemented ones (the typed check after lowering still
/// catches any this list misses). Measured on onnx's node tests with tract
/// 0.23.9 (`bench/conformance`).
fn cannot_carry(node: &pb::NodeProto) -> Option<&'static str> {
    let used = |ix: usize| node.input.get(ix).is_some_and(|s| !s.is_empty());
    let outputs = node.output.iter().filter(|o| !o.is_empty()).count();
    match node.op_type.as_str() {
        "DynamicQuantizeLinear" => Some("tract runs it, but the bundle format (NNEF) cannot carry it yet"),
        "MaxPool" if outputs > 1 => {
            Some("with its Indices output: tract runs it, but the bundle format (NNEF) cannot carry it yet")
        }
        "Dropout" if used(2) => Some(
            "with a training_mode input: tract runs it, but the bundle format (NNEF) cannot carry it yet; export the model for inference (model.eval())",
        ),
        _ => None,
    }
}

pub(crate) fn apply_inputs(model: &mut InferenceModel, inputs: &BTreeMap<String, InputConfig>) -> Result<()> {
    let names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    for name in inputs.keys() {
        if !names.contains(name) {
            bail!(
                "input `{name}` given in the input configuration is not an input of the model; its inputs are: {}",
                names.join(", ")
            );
        }
    }
    for (ix, name) in names.iter().enumerate() {
        let Some(cfg) = inputs.get(name) else { continue };
        let current = model.input_fact(ix)?.clone();
        let dt = cfg.dtype.or_else(|| current.datum_type.concretize()).unwrap_or(DatumType::F32);
        let mut dims: TVec<TDim> = tvec![];
        for (i, (d, sym)) in cfg.shape.iter().zip(&cfg.symbols).enumerate() {
            dims.push(match d {
                Some(n) => (*n).to_dim(),
                None => {
                    let s = sym.clone().unwrap_or_else(|| if i == 0 { "N".into() } else { format!("d{i}") });
                    model.symbols.sym(&s).to_dim()
                }
            });
        }
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims))?;
    }
    Ok(())
}

/// NNEF import (a `.nnef.tgz`/`.nnef.tar` archive or a `graph.nnef` directory).
pub fn nnef(located: &Located) -> Result<TypedModel> {
    let nnef = neoc_runtime::engine::nnef();
    let path = if located.path.file_name().is_some_and(|n| n == "graph.nnef") {
        located.path.parent().unwrap().to_path_buf()
    } else {
        located.path.clone()
    };
    nnef.model_for_path(&path).map_err(|e| anyhow::anyhow!("{}: not a loadable NNEF model ({e:#})", located.rel))
}

/// Loads an ONNX TensorProto file (test data).
pub fn load_tensor_pb(path: &Path) -> Result<(String, Tensor)> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let proto = tract_onnx::tensor::proto_from_reader(&bytes[..])
        .with_context(|| format!("{}: not a TensorProto", path.display()))?;
    let t = tract_onnx::tensor::load_tensor(&*tract_onnx::onnx().provider, &proto, None)
        .with_context(|| format!("{}: unreadable tensor", path.display()))?;
    Ok((proto.name.clone(), t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_flags_parse() {
        let v = parse_input_flag("features=N,30:f32").unwrap();
        assert_eq!(v[0].0, "features");
        assert_eq!(v[0].1.shape, vec![None, Some(30)]);
        assert_eq!(v[0].1.dtype, Some(DatumType::F32));
        let v = parse_input_flag(r#"{"data": [1, 3, 224, 224]}"#).unwrap();
        assert_eq!(v[0].1.shape, vec![Some(1), Some(3), Some(224), Some(224)]);
        assert!(parse_input_flag("x").unwrap_err().to_string().contains("NAME=DIMS"));
        assert!(parse_input_flag("x=1,2:f33").is_err());
        assert!(parse_input_flag("x=1,-2").is_err());
    }
}
