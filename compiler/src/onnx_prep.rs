//! Rewrites of an ONNX graph before tract reads it: what exporters write
//! that tract's inference cannot take as it is.
//!
//! - `value_info`: exports with dynamic axes annotate intermediate values
//!   with the export's symbols (`batch`, `DynamicDimension.0`); once
//!   `--input` pins the input shapes, those annotations contradict the
//!   facts (`Impossible to unify Sym(batch) with Val(1)`). They are hints,
//!   never needed to type a graph whose inputs are known, so they go.
//! - Pinned inputs (`--input sr=16000:i64`): the input becomes a constant of
//!   the graph, and is no longer an input of the bundle.
//! - `If` whose condition is known at compile time (a constant, or computed
//!   from constants, pinned inputs and pinned shapes): replaced by the
//!   branch it takes, so that the other branch (whose shapes may differ) is
//!   never typed. tract evaluates the condition (its own constant folding on
//!   the sub-graph that computes it), so any operator it folds can decide.
//! - An `If` that must stay data-dependent cannot be carried by the bundle
//!   format (NNEF has no sub-graphs): it is reported by the coverage
//!   pre-flight with its node name and the inputs it depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tract_onnx::pb::{self, tensor_proto::DataType, GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;

use crate::import::{InputConfig, Unsupported};

/// Removes every `value_info` annotation, in sub-graphs too; returns how
/// many there were.
pub fn strip_value_info(graph: &mut GraphProto) -> usize {
    let mut n = std::mem::take(&mut graph.value_info).len();
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            if let Some(g) = &mut attr.g {
                n += strip_value_info(g);
            }
            for g in &mut attr.graphs {
                n += strip_value_info(g);
            }
        }
    }
    n
}

/// Whether any graph, sub-graphs included, carries `value_info`.
pub fn has_value_info(graph: &GraphProto) -> bool {
    !graph.value_info.is_empty()
        || graph
            .node
            .iter()
            .flat_map(|n| &n.attribute)
            .any(|a| a.g.as_ref().is_some_and(has_value_info) || a.graphs.iter().any(has_value_info))
}

/// The declared rank of each graph input (`None` where the export gives no shape).
pub fn declared_ranks(graph: &GraphProto) -> BTreeMap<String, Option<usize>> {
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| (i.name.clone(), tensor_type(i).and_then(|t| t.shape.as_ref()).map(|s| s.dim.len())))
        .collect()
}

fn tensor_type(v: &pb::ValueInfoProto) -> Option<&pb::type_proto::Tensor> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    Some(t)
}

/// Turns each pinned input (an input configuration with a value) into an
/// initializer of the graph; returns `NAME=VALUE:DTYPE` for each, for the
/// manifest.
pub fn pin_inputs(graph: &mut GraphProto, inputs: &BTreeMap<String, InputConfig>) -> Result<BTreeMap<String, String>> {
    let mut pinned = BTreeMap::new();
    for (name, cfg) in inputs {
        let Some(value) = &cfg.value else { continue };
        let Some(pos) = graph.input.iter().position(|i| &i.name == name) else {
            bail!("--input {name}: not an input of the model, so it cannot be pinned to a value")
        };
        let declared = tensor_type(&graph.input[pos]).and_then(|t| DataType::try_from(t.elem_type).ok());
        let dt = match (cfg.dtype, declared) {
            (Some(dt), _) => dt,
            (None, Some(d)) => DatumType::try_from(d).with_context(|| format!("--input {name}: its declared type"))?,
            (None, None) => {
                bail!("--input {name}: the model does not declare its type; give one (e.g. {name}=VALUE:i64)")
            }
        };
        let tensor = value_tensor(value, &cfg.shape, dt).with_context(|| format!("--input {name}={value}"))?;
        graph.input.remove(pos);
        graph.initializer.retain(|t| &t.name != name);
        graph.initializer.push(tensor_proto(name, &tensor)?);
        pinned.insert(name.clone(), format!("{value}:{}", neoc_runtime::tensors::dtype_name(dt).unwrap_or("?")));
    }
    Ok(pinned)
}

fn onnx_type_of(dt: DatumType) -> Result<DataType> {
    Ok(match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        DatumType::F16 => DataType::Float16,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::Bool => DataType::Bool,
        other => bail!("{other:?} values cannot be pinned"),
    })
}

/// A JSON number, boolean or (nested) array as a tensor of `dt`; `shape`
/// (when given) must hold exactly as many values.
fn value_tensor(value: &Value, shape: &[Option<usize>], dt: DatumType) -> Result<Tensor> {
    fn flatten<'v>(v: &'v Value, out: &mut Vec<&'v Value>, dims: &mut Vec<usize>, depth: usize) -> Result<()> {
        match v {
            Value::Array(items) => {
                if dims.len() == depth {
                    dims.push(items.len());
                } else if dims[depth] != items.len() {
                    bail!("the nested arrays are ragged (lengths {} and {})", dims[depth], items.len());
                }
                for i in items {
                    flatten(i, out, dims, depth + 1)?;
                }
            }
            other => out.push(other),
        }
        Ok(())
    }
    let mut flat = Vec::new();
    let mut dims = Vec::new();
    flatten(value, &mut flat, &mut dims, 0)?;
    let dims: Vec<usize> = if shape.is_empty() {
        dims
    } else {
        let fixed: Vec<usize> =
            shape.iter().map(|d| d.context("a pinned value needs a fixed shape")).collect::<Result<_>>()?;
        if dims.len() == fixed.len() && dims != fixed {
            bail!("the value has shape {dims:?}, the input configuration says {fixed:?}");
        }
        fixed
    };
    if dims.iter().product::<usize>() != flat.len() {
        bail!("{} value(s) for shape {dims:?}", flat.len());
    }
    let tensor = if dt.is_float() {
        let v: Vec<f64> =
            flat.iter().map(|v| v.as_f64().with_context(|| format!("`{v}` is not a number"))).collect::<Result<_>>()?;
        Tensor::from_shape(&dims, &v)?
    } else if dt == DatumType::Bool {
        let v: Vec<bool> = flat
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => Ok(n.as_i64() == Some(1)),
                other => bail!("`{other}` is not a boolean"),
            })
            .collect::<Result<_>>()?;
        Tensor::from_shape(&dims, &v)?
    } else {
        let v: Vec<i64> = flat
            .iter()
            .map(|v| v.as_i64().with_context(|| format!("`{v}` is not a whole number within i64")))
            .collect::<Result<_>>()?;
        let t = Tensor::from_shape(&dims, &v)?;
        let back = t.cast_to_dt(dt)?.cast_to_dt(DatumType::I64)?.into_owned();
        if back != t {
            bail!("a value does not fit in {dt:?}");
        }
        t
    };
    Ok(tensor.cast_to_dt(dt)?.into_owned())
}

fn tensor_proto(name: &str, t: &Tensor) -> Result<pb::TensorProto> {
    let raw = t.try_as_plain_ram()?;
    Ok(pb::TensorProto {
        name: name.into(),
        dims: t.shape().iter().map(|d| *d as i64).collect(),
        data_type: onnx_type_of(t.datum_type())? as i32,
        raw_data: raw.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Replaces, until none is left, every top-level `If` whose condition tract
/// can compute at compile time by the branch it takes.
pub fn fold_ifs(model: &mut ModelProto, inputs: &BTreeMap<String, InputConfig>) -> Result<()> {
    // each round inlines one If (a branch may hold further ones)
    for _round in 0..10_000 {
        let graph = model.graph.as_ref().context("ONNX model has no graph")?;
        let mut chosen = None;
        for (ix, node) in graph.node.iter().enumerate() {
            if node.op_type != "If" || !node.domain.is_empty() {
                continue;
            }
            let Some(cond) = node.input.first() else { continue };
            if let Some(b) = condition_value(model, graph, cond, inputs) {
                chosen = Some((ix, b));
                break;
            }
        }
        let Some((ix, take_then)) = chosen else { return Ok(()) };
        let graph = model.graph.as_mut().expect("checked above");
        let node = graph.node.remove(ix);
        let name = node_name(&node);
        let branch = branch(&node, if take_then { "then_branch" } else { "else_branch" })?;
        if branch.output.len() != node.output.len() {
            bail!(
                "node `{name}` (If): its {} branch gives {} output(s), the node has {}",
                if take_then { "then" } else { "else" },
                branch.output.len(),
                node.output.len()
            );
        }
        let inlined = inline(&name, branch, &node.output);
        for (k, n) in inlined.0.into_iter().enumerate() {
            graph.node.insert(ix + k, n);
        }
        graph.initializer.extend(inlined.1);
    }
    bail!("more than 10,000 nested If nodes")
}

fn node_name(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

fn branch<'n>(node: &'n NodeProto, which: &str) -> Result<&'n GraphProto> {
    node.attribute
        .iter()
        .find(|a| a.name == which)
        .and_then(|a| a.g.as_ref())
        .with_context(|| format!("node `{}` (If) has no {which}", node_name(node)))
}

/// The branch's nodes and initializers, with every name it defines prefixed
/// by the node's (so none collides with the outer graph), and an Identity
/// from each branch output to the node's output of the same position.
fn inline(prefix: &str, g: &GraphProto, outputs: &[String]) -> (Vec<NodeProto>, Vec<pb::TensorProto>) {
    let mut defined: HashMap<String, String> = HashMap::new();
    for t in &g.initializer {
        defined.insert(t.name.clone(), format!("{prefix}/{}", t.name));
    }
    for n in &g.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            defined.insert(o.clone(), format!("{prefix}/{o}"));
        }
    }
    let rename = |s: &String| defined.get(s).cloned().unwrap_or_else(|| s.clone());
    let mut nodes = Vec::new();
    for n in &g.node {
        let mut n = n.clone();
        n.input = n.input.iter().map(rename).collect();
        n.output = n.output.iter().map(rename).collect();
        if !n.name.is_empty() {
            n.name = format!("{prefix}/{}", n.name);
        }
        for a in &mut n.attribute {
            if let Some(sub) = &mut a.g {
                rename_uses(sub, &defined);
            }
            for sub in &mut a.graphs {
                rename_uses(sub, &defined);
            }
        }
        nodes.push(n);
    }
    for (out, target) in g.output.iter().zip(outputs) {
        nodes.push(NodeProto {
            name: format!("{prefix}/{target}"),
            op_type: "Identity".into(),
            input: vec![rename(&out.name)],
            output: vec![target.clone()],
            ..Default::default()
        });
    }
    let inits = g
        .initializer
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.name = rename(&t.name);
            t
        })
        .collect();
    (nodes, inits)
}

/// Renames, inside a nested sub-graph, the uses of names its parent renamed
/// (names the sub-graph defines itself shadow them and stay).
fn rename_uses(g: &mut GraphProto, renamed: &HashMap<String, String>) {
    let mut own: BTreeSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    own.extend(g.input.iter().map(|i| i.name.clone()));
    own.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    let visible: HashMap<String, String> =
        renamed.iter().filter(|(k, _)| !own.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for n in &mut g.node {
        for i in &mut n.input {
            if let Some(r) = visible.get(i) {
                *i = r.clone();
            }
        }
        for a in &mut n.attribute {
            if let Some(sub) = &mut a.g {
                rename_uses(sub, &visible);
            }
            for sub in &mut a.graphs {
                rename_uses(sub, &visible);
            }
        }
    }
    for o in &mut g.output {
        if let Some(r) = visible.get(&o.name) {
            o.name = r.clone();
        }
    }
}

/// The nodes of the top-level graph that compute `value`, in graph order,
/// and the graph inputs they read; `None` when a sub-graph operator or an
/// undefined name is among them.
fn cone(graph: &GraphProto, value: &str) -> Option<(Vec<usize>, BTreeSet<String>)> {
    let producer: HashMap<&str, usize> =
        graph.node.iter().enumerate().flat_map(|(ix, n)| n.output.iter().map(move |o| (o.as_str(), ix))).collect();
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let graph_inputs: BTreeSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let mut nodes = BTreeSet::new();
    let mut reads = BTreeSet::new();
    let mut todo = vec![value.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(v) = todo.pop() {
        if v.is_empty() || !seen.insert(v.clone()) {
            continue;
        }
        if inits.contains(v.as_str()) {
            continue;
        }
        if let Some(&ix) = producer.get(v.as_str()) {
            let n = &graph.node[ix];
            if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
                return None;
            }
            nodes.insert(ix);
            todo.extend(n.input.iter().cloned());
        } else if graph_inputs.contains(v.as_str()) {
            reads.insert(v);
        } else {
            return None;
        }
    }
    Some((nodes.into_iter().collect(), reads))
}

/// The value of an `If` condition, when tract can compute it from what is
/// known at compile time.
fn condition_value(
    model: &ModelProto,
    graph: &GraphProto,
    cond: &str,
    inputs: &BTreeMap<String, InputConfig>,
) -> Option<bool> {
    let (nodes, reads) = cone(graph, cond)?;
    let needed: BTreeSet<&str> = nodes.iter().flat_map(|&ix| graph.node[ix].input.iter().map(|s| s.as_str())).collect();
    let mut g = GraphProto {
        name: "condition".into(),
        node: nodes.iter().map(|&ix| graph.node[ix].clone()).collect(),
        initializer: graph
            .initializer
            .iter()
            .filter(|t| needed.contains(t.name.as_str()) || t.name == cond)
            .cloned()
            .collect(),
        input: graph.input.iter().filter(|i| reads.contains(&i.name)).cloned().collect(),
        ..Default::default()
    };
    g.output.push(pb::ValueInfoProto {
        name: cond.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Bool as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mini = ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph: Some(g),
        ..Default::default()
    };
    let facts: BTreeMap<String, InputConfig> =
        inputs.iter().filter(|(k, _)| reads.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let run = || -> TractResult<Option<bool>> {
        let onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
        let mut m = onnx.model_for_proto_model(&mini)?;
        crate::import::apply_inputs(&mut m, &facts).map_err(|e| anyhow::anyhow!("{e}"))?;
        let typed = m.into_typed()?.into_decluttered()?;
        let out = typed.output_outlets()?[0];
        Ok(match &typed.outlet_fact(out)?.konst {
            Some(k) if k.len() == 1 => Some(k.cast_to_scalar::<bool>()?),
            _ => None,
        })
    };
    neoc_runtime::guard::caught(run).ok()?.ok()?
}

/// A graph input's declared element type in `--input`'s words (`i64`).
fn declared_dtype(graph: &GraphProto, name: &str) -> &'static str {
    graph
        .input
        .iter()
        .find(|i| i.name == name)
        .and_then(tensor_type)
        .and_then(|t| DataType::try_from(t.elem_type).ok())
        .and_then(|d| DatumType::try_from(d).ok())
        .and_then(neoc_runtime::tensors::dtype_name)
        .unwrap_or("DTYPE")
}

/// Every `If` left in the graph (sub-graphs included), as the coverage
/// pre-flight reports it: the bundle format cannot carry a branch chosen per
/// request.
pub fn data_dependent_ifs(graph: &GraphProto, out: &mut Vec<Unsupported>) {
    for node in &graph.node {
        if node.op_type == "If" && node.domain.is_empty() {
            let cond = node.input.first().cloned().unwrap_or_default();
            let why = match cone(graph, &cond) {
                Some((_, reads)) if !reads.is_empty() => {
                    let ranks = declared_ranks(graph);
                    // a scalar is pinned by value; a tensor's shape decides when it is given
                    let pins: Vec<String> = reads
                        .iter()
                        .map(|r| match ranks.get(r) {
                            Some(Some(0)) => format!("--input {r}=VALUE:{}", declared_dtype(graph, r)),
                            _ => format!("--input {r}=DIMS (if its shape decides)"),
                        })
                        .collect();
                    format!(
                        "its condition `{cond}` depends on the input{} {} at run time, and the bundle format cannot carry a branch chosen per request; pin {} with {} to choose the branch at compile time",
                        if reads.len() == 1 { "" } else { "s" },
                        reads.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "),
                        if reads.len() == 1 { "it" } else { "them" },
                        pins.join(", ")
                    )
                }
                _ => format!("its condition `{cond}` is computed at run time, and the bundle format cannot carry a branch chosen per request"),
            };
            out.push(Unsupported { node: node_name(node), op: "If".into(), why });
        }
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                data_dependent_ifs(g, out);
            }
            for g in &attr.graphs {
                data_dependent_ifs(g, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_tensors_of_the_asked_type() {
        let t = value_tensor(&serde_json::json!(16000), &[], DatumType::I64).unwrap();
        assert_eq!(t, tensor0(16000i64));
        let t = value_tensor(&serde_json::json!([[1, 2], [3, 4]]), &[], DatumType::F32).unwrap();
        assert_eq!(t, tensor2(&[[1f32, 2.], [3., 4.]]));
        assert!(value_tensor(&serde_json::json!(300), &[], DatumType::U8).unwrap_err().to_string().contains("fit"));
        assert!(value_tensor(&serde_json::json!(0.5), &[], DatumType::I64).is_err());
        assert!(value_tensor(&serde_json::json!([[1], [2, 3]]), &[], DatumType::F32)
            .unwrap_err()
            .to_string()
            .contains("ragged"));
        assert!(value_tensor(&serde_json::json!([1, 2]), &[Some(3)], DatumType::F32).is_err());
    }
}
