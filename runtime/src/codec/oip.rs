//! The Open Inference Protocol v2 (KServe, Triton) as pure functions:
//! an infer request's JSON (and binary tensor extension) to a [`Batch`],
//! outputs back to the response body, and a model's metadata.
//!
//! Nothing is allocated from a declared shape before it is checked: the
//! shape's product is computed with checked arithmetic, its rank and fixed
//! dimensions must match the model's, and the data must hold exactly that
//! many values (or bytes) before a tensor is built.

use std::collections::BTreeMap;

use neoc_bundle::dtype::DType;
use neoc_bundle::manifest::{shape_string, Dim, Manifest, TensorSpec};
use serde_json::{json, Value};
use tract_core::prelude::*;

use super::{bad, tensor_from_json, BadRequest, Batch};
use crate::tensors::{datum_type_of, NamedTensor};

/// What the client asked for back: outputs (all when `None`), which of
/// them as binary data, and the request id to echo.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    id: Option<Value>,
    outputs: Option<Vec<(String, bool)>>,
    all_binary: bool,
}

impl Wanted {
    fn includes(&self, name: &str) -> bool {
        self.outputs.as_ref().is_none_or(|o| o.iter().any(|(n, _)| n == name))
    }

    fn binary(&self, name: &str) -> bool {
        self.all_binary || self.outputs.as_ref().is_some_and(|o| o.iter().any(|(n, b)| n == name && *b))
    }
}

/// An encoded response: JSON, or a JSON header of `json_len` bytes followed
/// by binary tensors.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

fn dtype(spec: &TensorSpec) -> Result<DType, BadRequest> {
    DType::parse(&spec.dtype).ok_or_else(|| bad(format!("`{}` has unsupported dtype {}", spec.name, spec.dtype)))
}

/// The OIP datatype of a manifest dtype (`BYTES` for one OIP has no number type for).
pub fn datatype(spec: &TensorSpec) -> &'static str {
    DType::parse(&spec.dtype).map(DType::oip).unwrap_or("BYTES")
}

fn oip_shape(shape: &[Dim]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as i64,
            Dim::Symbol(_) => -1,
        })
        .collect()
}

fn specs(specs: &[TensorSpec]) -> Value {
    specs.iter().map(|s| json!({"name": s.name, "datatype": datatype(s), "shape": oip_shape(&s.shape)})).collect()
}

/// `GET /v2/models/{name}`.
pub fn metadata(name: &str, m: &Manifest) -> Value {
    json!({
        "name": name,
        "versions": [m.model.version],
        "platform": format!("neoc-{}", m.engine.name),
        "inputs": specs(&m.inputs),
        "outputs": specs(&m.outputs),
    })
}

/// Decodes an infer request for a model with these inputs and outputs.
/// `header_len`: the `Inference-Header-Content-Length` header, when the
/// body carries binary tensors after its JSON.
pub fn decode(
    body: &[u8],
    header_len: Option<usize>,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<(Batch, Wanted), BadRequest> {
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(bad(format!(
            "Inference-Header-Content-Length {header_len} is beyond the {} byte body",
            body.len()
        )));
    }
    let (json_part, mut binary) = body.split_at(header_len);
    let req: Value = serde_json::from_slice(json_part).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    let given = req.get("inputs").and_then(|i| i.as_array()).ok_or_else(|| bad("request has no \"inputs\" array"))?;
    // binary sections follow the order of the request's inputs
    let mut raw_of: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for inp in given {
        let name = inp.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if let Some(size) = inp.get("parameters").and_then(|p| p.get("binary_data_size")) {
            let size = size.as_u64().ok_or_else(|| bad(format!("input `{name}`: binary_data_size is not a size")))?;
            if size > binary.len() as u64 {
                return Err(bad(format!("binary data of input `{name}` is truncated")));
            }
            let (mine, rest) = binary.split_at(size as usize);
            raw_of.insert(name, mine);
            binary = rest;
        }
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data belong to no input", binary.len())));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut rows = None;
    // without a shared batch axis (a stateful model) a request is one run
    let shared = super::shared_batch_axis(inputs);
    for spec in inputs {
        let inp = given
            .iter()
            .find(|i| i.get("name").and_then(|n| n.as_str()) == Some(&spec.name))
            .ok_or_else(|| bad(format!("input `{}` is missing", spec.name)))?;
        let t = decode_input(spec, inp, raw_of.get(spec.name.as_str()).copied())?;
        let r = if shared { t.shape().first().copied().unwrap_or(1) } else { 1 };
        if rows.is_some_and(|x| x != r) {
            return Err(bad("inputs have different batch sizes"));
        }
        rows = Some(r);
        tensors.push(t);
    }
    let wanted = Wanted {
        id: req.get("id").cloned(),
        outputs: req.get("outputs").and_then(|o| o.as_array()).map(|a| {
            a.iter()
                .filter_map(|o| {
                    let name = o.get("name")?.as_str()?.to_string();
                    let binary = o.get("parameters").and_then(|p| p.get("binary_data")).and_then(|b| b.as_bool());
                    Some((name, binary == Some(true)))
                })
                .collect()
        }),
        all_binary: req
            .get("parameters")
            .and_then(|p| p.get("binary_data_output"))
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
    };
    if let Some(w) = &wanted.outputs {
        if let Some((missing, _)) = w.iter().find(|(n, _)| !outputs.iter().any(|o| &o.name == n)) {
            return Err(bad(format!("unknown output `{missing}`")));
        }
    }
    Ok((Batch { rows: rows.unwrap_or(1), inputs: tensors }, wanted))
}

/// One input: its datatype and shape checked against the model's, then its
/// values read from binary data or from (possibly nested) JSON `data`.
fn decode_input(spec: &TensorSpec, inp: &Value, raw: Option<&[u8]>) -> Result<Tensor, BadRequest> {
    let name = &spec.name;
    let want = dtype(spec)?;
    let dt = inp.get("datatype").and_then(|d| d.as_str()).unwrap_or("");
    if DType::from_oip(dt) != Some(want) {
        return Err(bad(format!("input `{name}` has datatype {dt:?}; the model takes {}", want.oip())));
    }
    let dims =
        inp.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad(format!("input `{name}` has no shape")))?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("input `{name}`: shape must hold non-negative integers")))
        })
        .collect::<Result<_, _>>()?;
    let elements = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| n.checked_mul(want.size().unwrap_or(4)).is_some())
        .ok_or_else(|| bad(format!("input `{name}`: shape {shape:?} is too large")))?;
    if shape.len() != spec.shape.len() {
        return Err(bad(format!(
            "input `{name}`: shape has {} dimensions; the model takes {} dimensions ({})",
            shape.len(),
            spec.shape.len(),
            shape_string(&spec.shape)
        )));
    }
    let fits = shape.iter().zip(&spec.shape).all(|(n, d)| match d {
        Dim::Fixed(f) => *n as u64 == *f,
        Dim::Symbol(_) => true,
    });
    if !fits {
        return Err(bad(format!("input `{name}` expects shape {}; got shape {shape:?}", shape_string(&spec.shape))));
    }
    if let (Some(raw), None) = (raw, want.size()) {
        // BYTES: each element a 4-byte little-endian length, then its bytes
        let v = crate::tensors::read_strings(raw, elements)
            .map_err(|e| bad(format!("input `{name}`: binary BYTES data for shape {shape:?}: {e}")))?;
        return crate::tensors::string_tensor(&shape, v).map_err(|e| bad(format!("input `{name}`: {e}")));
    }
    if let (Some(raw), Some(width)) = (raw, want.size()) {
        let size = elements * width;
        if raw.len() != size {
            return Err(bad(format!(
                "input `{name}`: {} bytes of binary data for shape {shape:?} of {dt} ({size} expected)",
                raw.len()
            )));
        }
        return tensor_from_le(want, &shape, raw).map_err(|e| bad(format!("input `{name}`: {e}")));
    }
    let data = inp.get("data").ok_or_else(|| bad(format!("input `{name}` has no data")))?;
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    if leaves.len() != elements {
        return Err(bad(format!("input `{name}`: {} values for shape {shape:?} ({elements} expected)", leaves.len())));
    }
    tensor_from_json(&leaves, datum_type_of(want), &shape, name)
}

/// The leaves of nested JSON arrays in order (OIP allows flat and nested
/// `data`); depth is bounded by the JSON parser's recursion limit.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// Little-endian, row-major elements to a tensor; `raw` has exactly the size.
fn tensor_from_le(dt: DType, shape: &[usize], raw: &[u8]) -> TractResult<Tensor> {
    macro_rules! le {
        ($ty:ty) => {{
            const N: usize = std::mem::size_of::<$ty>();
            let v: Vec<$ty> =
                raw.chunks_exact(N).map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunks of N"))).collect();
            Tensor::from_shape(shape, &v)?
        }};
    }
    Ok(match dt {
        DType::F32 => le!(f32),
        DType::F64 => le!(f64),
        DType::I64 => le!(i64),
        DType::I32 => le!(i32),
        DType::I16 => le!(i16),
        DType::I8 => le!(i8),
        DType::U64 => le!(u64),
        DType::U32 => le!(u32),
        DType::U16 => le!(u16),
        DType::U8 => le!(u8),
        DType::Bool => Tensor::from_shape(shape, &raw.iter().map(|b| *b != 0).collect::<Vec<bool>>())?,
        DType::String => crate::tensors::read_strings(raw, shape.iter().product())
            .and_then(|v| crate::tensors::string_tensor(shape, v))?,
        DType::F16 => {
            let v: Vec<f16> = raw.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect();
            Tensor::from_shape(shape, &v)?
        }
    })
}

/// A tensor's elements, little-endian, row-major.
fn tensor_to_le(t: &Tensor) -> TractResult<Vec<u8>> {
    let p = t.try_as_plain_ram()?;
    macro_rules! le {
        ($ty:ty) => {
            p.as_slice::<$ty>()?.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
    }
    Ok(match t.datum_type() {
        DatumType::F32 => le!(f32),
        DatumType::F64 => le!(f64),
        DatumType::I64 => le!(i64),
        DatumType::I32 => le!(i32),
        DatumType::I16 => le!(i16),
        DatumType::I8 => le!(i8),
        DatumType::U64 => le!(u64),
        DatumType::U32 => le!(u32),
        DatumType::U16 => le!(u16),
        DatumType::U8 => le!(u8),
        DatumType::F16 => p.as_slice::<f16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        DatumType::Bool => p.as_slice::<bool>()?.iter().map(|b| *b as u8).collect(),
        DatumType::String => {
            let mut out = Vec::new();
            crate::tensors::write_strings(p.as_slice::<String>()?, &mut out);
            out
        }
        other => anyhow::bail!("output type {other:?} cannot be sent as binary data"),
    })
}

/// The response to a request decoded into `wanted`, for these outputs.
pub fn encode(
    wanted: &Wanted,
    model: &str,
    version: &str,
    specs: &[TensorSpec],
    outputs: &[Tensor],
) -> TractResult<Encoded> {
    let mut outs = Vec::new();
    let mut binary: Vec<u8> = Vec::new();
    for (spec, t) in specs.iter().zip(outputs) {
        if !wanted.includes(&spec.name) {
            continue;
        }
        if wanted.binary(&spec.name) {
            let raw = tensor_to_le(t)?;
            outs.push(json!({"name": spec.name, "datatype": datatype(spec), "shape": t.shape(), "parameters": {"binary_data_size": raw.len()}}));
            binary.extend(raw);
            continue;
        }
        let nt = NamedTensor::from_tensor(&spec.name, t)?;
        outs.push(json!({"name": spec.name, "datatype": datatype(spec), "shape": nt.shape, "data": nt.data}));
    }
    let mut resp = json!({"model_name": model, "model_version": version, "outputs": outs});
    if let Some(id) = &wanted.id {
        resp["id"] = id.clone();
    }
    let mut body = resp.to_string().into_bytes();
    if binary.is_empty() {
        return Ok(Encoded { body, json_len: None });
    }
    let json_len = body.len();
    body.extend(binary);
    Ok(Encoded { body, json_len: Some(json_len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: dtype.into(), shape, non_finite: false }
    }

    fn inputs() -> Vec<TensorSpec> {
        vec![spec("x", "f32", vec![Dim::Symbol("N".into()), Dim::Fixed(2)])]
    }

    #[test]
    fn json_and_binary_inputs_decode_to_the_same_batch() {
        let outs = vec![spec("y", "i64", vec![Dim::Symbol("N".into())])];
        let j = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]});
        let (a, _) = decode(j.to_string().as_bytes(), None, &inputs(), &outs).unwrap();
        let header = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}]})
            .to_string();
        let mut body = header.clone().into_bytes();
        body.extend([1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()));
        let (b, _) = decode(&body, Some(header.len()), &inputs(), &outs).unwrap();
        assert_eq!(a.rows, 2);
        assert_eq!(a.inputs, b.inputs);
    }

    #[test]
    fn encode_writes_binary_outputs_after_the_json_header() {
        let outs = vec![spec("y", "i64", vec![Dim::Symbol("N".into())])];
        let w = Wanted { all_binary: true, ..Wanted::default() };
        let e = encode(&w, "m", "1", &outs, &[tensor1(&[7i64, -1])]).unwrap();
        let n = e.json_len.unwrap();
        let head: Value = serde_json::from_slice(&e.body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert_eq!(i64::from_le_bytes(e.body[n + 8..n + 16].try_into().unwrap()), -1);
    }

    #[test]
    fn bytes_tensors_as_json_strings_and_as_binary() {
        let ins = vec![spec("t", "string", vec![Dim::Symbol("N".into())])];
        let outs = vec![spec("u", "string", vec![Dim::Symbol("N".into())])];
        let j = json!({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]}]});
        let (a, _) = decode(j.to_string().as_bytes(), None, &ins, &outs).unwrap();
        let want = tensor1(&["héllo".to_string(), String::new()]);
        assert_eq!(a.inputs[0], want);
        let mut raw = Vec::new();
        crate::tensors::write_strings(&["héllo".to_string(), String::new()], &mut raw);
        let header =
            json!({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": raw.len()}}]})
                .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(&raw);
        let (b, _) = decode(&body, Some(header.len()), &ins, &outs).unwrap();
        assert_eq!(b.inputs[0], want);
        // answers: JSON strings, or the same binary form
        let e = encode(&Wanted::default(), "m", "1", &outs, std::slice::from_ref(&want)).unwrap();
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(
            (v["outputs"][0]["datatype"].as_str(), &v["outputs"][0]["data"][0]),
            (Some("BYTES"), &json!("héllo"))
        );
        let e = encode(&Wanted { all_binary: true, ..Wanted::default() }, "m", "1", &outs, &[want]).unwrap();
        assert_eq!(&e.body[e.json_len.unwrap()..], &raw[..]);
        // bad: a number for a string, a length past the data, a wrong datatype
        let j = json!({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [5]}]});
        let e = decode(j.to_string().as_bytes(), None, &ins, &outs).unwrap_err();
        assert!(e.0.contains("not a string"), "{e}");
        let header =
            json!({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}}]})
                .to_string();
        let mut body = header.clone().into_bytes();
        body.extend([9, 0, 0, 0, b'a']);
        let e = decode(&body, Some(header.len()), &ins, &outs).unwrap_err();
        assert!(e.0.contains("input `t`: binary BYTES data") && e.0.contains("runs past"), "{e}");
        let j = json!({"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": [5]}]});
        let e = decode(j.to_string().as_bytes(), None, &ins, &outs).unwrap_err();
        assert!(e.0.contains("the model takes BYTES"), "{e}");
    }

    #[test]
    fn oversized_and_overflowing_shapes_are_refused_before_allocating() {
        for shape in [
            json!([4294967296u64, 4294967296u64]),
            json!([9223372036854775808u64, 2]),
            json!([4611686018427387904u64, 2]),
        ] {
            let j = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]});
            let e = decode(j.to_string().as_bytes(), None, &inputs(), &[]).unwrap_err();
            assert!(e.0.contains("too large") || e.0.contains("values for shape"), "{e}");
        }
        let j = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": vec![1; 10000], "data": [0.5]}]});
        let e = decode(j.to_string().as_bytes(), None, &inputs(), &[]).unwrap_err();
        assert!(e.0.contains("10000 dimensions"), "{e}");
    }
}
