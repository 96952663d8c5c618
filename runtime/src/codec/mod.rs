//! Request and response codecs, as pure functions: CSV, JSON and JSON Lines
//! bodies to input tensors and output tensors back (this module), the
//! Open Inference Protocol's JSON and binary forms (`oip`) and `.npy`
//! bodies (`npy`). Over 600 lines with its unit tests: CSV and JSON share the
//! row logic, value parsing and range checks here, so they stay together.
//!
//! Where the inputs share a batch axis ([`shared_batch_axis`]: one input, or
//! every input with the same first dimension), every input is seen as a
//! batch of rows: the first axis is the batch axis (fixed or symbolic), the
//! rest is the shape of one row. A request may carry one row or many;
//! [`crate::Model::predict`] runs them in as few model runs as the model's
//! batch axis allows. Where they do not (a stateful model: `audio[1,576]`
//! beside `state[2,1,128]`), a request carries each input whole and is one run.

use anyhow::ensure;
use neoc_bundle::manifest::{shape_string, Dim, TensorSpec};
use serde_json::Value;
use tract_core::prelude::*;

use crate::tensors::{datum_type, NamedTensor};

pub mod npy;
pub mod oip;

/// Body formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    /// NumPy's `.npy` (one array; requests only).
    Npy,
}

impl Format {
    /// From a MIME type (`text/csv`, `application/json`) or a short name.
    pub fn parse(s: &str) -> Option<Format> {
        let base = s.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "csv" | "text/csv" => Some(Format::Csv),
            "json" | "application/json" => Some(Format::Json),
            "npy" | "application/x-npy" => Some(Format::Npy),
            _ => None,
        }
    }

    /// Guesses from the first non-blank byte: `{` or `[` is JSON.
    pub fn sniff(body: &[u8]) -> Format {
        if npy::is_npy(body) {
            return Format::Npy;
        }
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Format::Json,
            _ => Format::Csv,
        }
    }
}

/// A request that does not fit the model. Always the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

pub(crate) fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// Inputs of one request, each as `[rows] + row shape`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub rows: usize,
    pub inputs: Vec<Tensor>,
}

/// Whether the inputs share a batch axis (axis 0), so that a request is a
/// number of rows that can be split or merged: one input, or every input
/// with the same first dimension (the same symbol, or the same size). A
/// stateful model (`audio[1,576]` beside `state[2,1,128]`) or one with a
/// scalar beside a tensor has none, and each request is run as given.
pub fn shared_batch_axis(inputs: &[TensorSpec]) -> bool {
    match inputs {
        [] | [_] => true,
        [first, rest @ ..] => first.shape.first().is_some_and(|d0| rest.iter().all(|i| i.shape.first() == Some(d0))),
    }
}

/// The shape of one row of an input (its shape without the batch axis), if
/// every dimension of it is fixed.
fn row_shape(spec: &TensorSpec) -> Result<Vec<usize>, BadRequest> {
    spec.shape
        .iter()
        .skip(1)
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n as usize),
            Dim::Symbol(s) => Err(bad(format!(
                "input `{}` has shape {} with symbolic dimension `{s}` after the batch axis; neorun cannot infer it from the request",
                spec.name,
                shape_string(&spec.shape)
            ))),
        })
        .collect()
}

pub(crate) fn dtype_of(spec: &TensorSpec) -> Result<DatumType, BadRequest> {
    datum_type(&spec.dtype).ok_or_else(|| bad(format!("input `{}` has unsupported dtype {}", spec.name, spec.dtype)))
}

/// Parses a body into a batch for a model with these inputs.
pub fn parse(body: &[u8], format: Format, inputs: &[TensorSpec]) -> Result<Batch, BadRequest> {
    match format {
        Format::Csv => parse_csv(body, inputs),
        Format::Json => parse_json(body, inputs),
        Format::Npy => npy::parse(body, inputs),
    }
}

fn parse_csv(body: &[u8], inputs: &[TensorSpec]) -> Result<Batch, BadRequest> {
    let [spec] = inputs else {
        return Err(bad(format!(
            "CSV requests need a model with one input; this one has {} ({}); send JSON with an object of named inputs",
            inputs.len(),
            inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    let text = std::str::from_utf8(body).map_err(|_| bad("CSV body is not UTF-8 text"))?;
    let row = row_shape(spec)?;
    let width: usize = row.iter().product();
    let dt = dtype_of(spec)?;
    let mut values: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    let mut rows = 0;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // straight into `values` (no vector per line: this runs per row of
        // every CSV request and batch record)
        let start = values.len();
        if line.contains('"') {
            split_quoted(line, &mut values).map_err(|e| bad(format!("CSV line {}: {e}", lineno + 1)))?;
        } else {
            values.extend(line.split(',').map(|v| v.trim().into()));
        }
        if values.len() - start != width {
            return Err(bad(format!(
                "CSV line {} has {} values; input `{}` takes {width} per row (shape {})",
                lineno + 1,
                values.len() - start,
                spec.name,
                shape_string(&spec.shape)
            )));
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(bad("CSV body has no rows"));
    }
    let mut shape = vec![rows];
    shape.extend(&row);
    let t = tensor_from_strs(&values, dt, &shape, |i| format!("CSV line {}, column {}", i / width + 1, i % width + 1))?;
    Ok(Batch { rows, inputs: vec![t] })
}

/// The fields of one CSV line with RFC 4180 quoting (`"a,b"`, and `""`
/// for a quote inside a quoted field), onto `out`. Quoted fields keep their
/// spaces, others are trimmed.
fn split_quoted<'a>(line: &'a str, out: &mut Vec<std::borrow::Cow<'a, str>>) -> Result<(), String> {
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start();
        if let Some(body) = trimmed.strip_prefix('"') {
            // up to the closing quote; `""` is a quote inside the field
            let bytes = body.as_bytes();
            let mut end = None;
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'"' {
                    if bytes.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let end = end.ok_or("a quoted field has no closing quote (fields may not span lines)")?;
            let field = &body[..end];
            out.push(if field.contains("\"\"") { field.replace("\"\"", "\"").into() } else { field.into() });
            let after = body[end + 1..].trim_start();
            match after.strip_prefix(',') {
                Some(next) => rest = next,
                None if after.is_empty() => return Ok(()),
                None => {
                    return Err(format!(
                        "`{}` after a closing quote; a field that holds quotes must be quoted whole",
                        after.chars().take(20).collect::<String>()
                    ))
                }
            }
        } else {
            match rest.split_once(',') {
                Some((field, next)) => {
                    out.push(field.trim().into());
                    rest = next;
                }
                None => {
                    out.push(rest.trim().into());
                    return Ok(());
                }
            }
        }
    }
}

fn tensor_from_strs(
    values: &[std::borrow::Cow<'_, str>],
    dt: DatumType,
    shape: &[usize],
    place: impl Fn(usize) -> String,
) -> Result<Tensor, BadRequest> {
    macro_rules! parse_as {
        ($ty:ty, $what:expr, $empty:expr) => {{
            let mut v: Vec<$ty> = Vec::with_capacity(values.len());
            for (i, s) in values.iter().enumerate() {
                let x = match ($empty, s.is_empty()) {
                    (Some(missing), true) => missing,
                    _ => s.parse::<$ty>().map_err(|_| bad(format!("{}: `{s}` is not {}", place(i), $what)))?,
                };
                v.push(x);
            }
            Tensor::from_shape(shape, &v).map_err(|e| bad(e.to_string()))?
        }};
    }
    // an empty CSV field is a missing value (NaN) for float inputs
    Ok(match dt {
        DatumType::String => {
            let v: Vec<String> = values.iter().map(|s| s.to_string()).collect();
            crate::tensors::string_tensor(shape, v).map_err(|e| bad(e.to_string()))?
        }
        DatumType::F32 => parse_as!(f32, "a number", Some(f32::NAN)),
        DatumType::F64 => parse_as!(f64, "a number", Some(f64::NAN)),
        DatumType::F16 => parse_as!(f32, "a number", Some(f32::NAN))
            .cast_to_dt(DatumType::F16)
            .map_err(|e| bad(e.to_string()))?
            .into_owned(),
        DatumType::Bool => {
            let mut v = Vec::with_capacity(values.len());
            for (i, s) in values.iter().enumerate() {
                v.push(match s.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("{}: `{s}` is not a boolean", place(i)))),
                });
            }
            Tensor::from_shape(shape, &v).map_err(|e| bad(e.to_string()))?
        }
        int => {
            let t = parse_as!(i64, "an integer", None::<i64>);
            if let Some((lo, hi)) = int_bounds(int) {
                let v = t
                    .try_as_plain_ram()
                    .and_then(|p| p.as_slice::<i64>().map(|s| s.to_vec()))
                    .map_err(|e| bad(e.to_string()))?;
                if let Some(i) = v.iter().position(|n| *n < lo || *n > hi) {
                    return Err(bad(format!("{}: {} is out of range for {}", place(i), v[i], dtype_label(int))));
                }
            }
            t.cast_to_dt(int).map_err(|e| bad(e.to_string()))?.into_owned()
        }
    })
}

fn parse_json(body: &[u8], inputs: &[TensorSpec]) -> Result<Batch, BadRequest> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    // {"inputs": X}, {"instances": [rows]}, or a bare X
    let payload = match &v {
        Value::Object(o) if o.contains_key("inputs") => &o["inputs"],
        Value::Object(o) if o.contains_key("instances") => &o["instances"],
        Value::Object(o) if inputs.len() > 1 || inputs.iter().any(|i| o.contains_key(&i.name)) => &v,
        Value::Object(o) => {
            return Err(bad(format!(
                "JSON object has keys [{}]; expected \"inputs\", \"instances\", or the input names [{}]",
                o.keys().cloned().collect::<Vec<_>>().join(", "),
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
        _ => &v,
    };
    let per_input: Vec<&Value> = match (payload, inputs) {
        (Value::Object(o), _) => {
            for k in o.keys() {
                if !inputs.iter().any(|i| &i.name == k) {
                    return Err(bad(format!("unknown input `{k}`; the model's inputs are [{}]", names(inputs))));
                }
            }
            inputs
                .iter()
                .map(|i| o.get(&i.name).ok_or_else(|| bad(format!("input `{}` is missing", i.name))))
                .collect::<Result<_, _>>()?
        }
        (other, [_]) => vec![other],
        (_, _) => {
            return Err(bad(format!(
                "this model has {} inputs; send an object of named inputs {{\"{}\": …}}",
                inputs.len(),
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("\": …, \"")
            )))
        }
    };
    if !shared_batch_axis(inputs) {
        // no rows: each input as its whole tensor, one run
        let tensors = inputs
            .iter()
            .zip(per_input)
            .map(|(spec, value)| whole_json_input(spec, value))
            .collect::<Result<_, _>>()?;
        return Ok(Batch { rows: 1, inputs: tensors });
    }
    let mut rows = None;
    let mut tensors = Vec::with_capacity(inputs.len());
    for (spec, value) in inputs.iter().zip(per_input) {
        let (n, t) = json_input(spec, value)?;
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                return Err(bad(format!("inputs have different numbers of rows ({r} and {n} for `{}`)", spec.name)))
            }
            _ => {}
        }
        tensors.push(t);
    }
    Ok(Batch { rows: rows.unwrap_or(1), inputs: tensors })
}

fn names(inputs: &[TensorSpec]) -> String {
    inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Shape and flattened leaves of a rectangular nested JSON array.
fn flatten<'a>(v: &'a Value, name: &str) -> Result<(Vec<usize>, Vec<&'a Value>), BadRequest> {
    fn shape_of(v: &Value) -> Vec<usize> {
        let mut s = vec![];
        let mut cur = v;
        while let Value::Array(a) = cur {
            s.push(a.len());
            match a.first() {
                Some(x) => cur = x,
                None => break,
            }
        }
        s
    }
    fn walk<'a>(v: &'a Value, shape: &[usize], out: &mut Vec<&'a Value>) -> bool {
        match (v, shape) {
            (Value::Array(a), [n, rest @ ..]) => a.len() == *n && a.iter().all(|x| walk(x, rest, out)),
            (Value::Array(_), []) => false,
            (x, []) => {
                out.push(x);
                true
            }
            _ => false,
        }
    }
    let shape = shape_of(v);
    let mut leaves = Vec::new();
    if !walk(v, &shape, &mut leaves) {
        return Err(bad(format!("input `{name}` is not a rectangular array of numbers")));
    }
    Ok((shape, leaves))
}

/// Whether a whole tensor of `shape` fits the input: its rank, its fixed
/// dimensions (symbolic ones take any size).
pub fn fits(shape: &[usize], spec: &TensorSpec) -> bool {
    shape.len() == spec.shape.len()
        && shape.iter().zip(&spec.shape).all(|(n, d)| match d {
            Dim::Fixed(f) => *n as u64 == *f,
            Dim::Symbol(_) => true,
        })
}

/// One input of a model without a shared batch axis: the whole tensor, its
/// fixed dimensions as the manifest says, its symbolic ones as sent.
fn whole_json_input(spec: &TensorSpec, value: &Value) -> Result<Tensor, BadRequest> {
    let dt = dtype_of(spec)?;
    let (got, leaves) = flatten(value, &spec.name)?;
    if !fits(&got, spec) {
        return Err(bad(format!(
            "input `{}` expects shape {} (this model's inputs share no batch axis, so each is sent whole); got an array of shape {got:?}",
            spec.name,
            shape_string(&spec.shape)
        )));
    }
    tensor_from_json(&leaves, dt, &got, &spec.name)
}

fn json_input(spec: &TensorSpec, value: &Value) -> Result<(usize, Tensor), BadRequest> {
    let dt = dtype_of(spec)?;
    let (got, leaves) = flatten(value, &spec.name)?;
    let want = shape_string(&spec.shape);
    let (rows, shape) = if spec.shape.is_empty() {
        if !got.is_empty() {
            return Err(bad(format!("input `{}` is a scalar; got an array of shape {got:?}", spec.name)));
        }
        (1, vec![])
    } else {
        let row = row_shape(spec)?;
        let width: usize = row.iter().product();
        if got.len() == spec.shape.len() && got[1..] == row[..] {
            (got[0], got.clone()) // a batch of rows
        } else if got == row {
            (1, [vec![1], row.clone()].concat()) // one row without its batch axis
        } else if got.len() == 2 && got[1] == width && row.len() > 1 {
            (got[0], [vec![got[0]], row.clone()].concat()) // flattened rows
        } else {
            return Err(bad(format!(
                "input `{}` expects shape {want} (one row is {row:?}); got an array of shape {got:?}",
                spec.name
            )));
        }
    };
    if rows == 0 {
        return Err(bad(format!("input `{}` has no rows", spec.name)));
    }
    let t = tensor_from_json(&leaves, dt, &shape, &spec.name)?;
    Ok((rows, t))
}

pub(crate) fn tensor_from_json(
    leaves: &[&Value],
    dt: DatumType,
    shape: &[usize],
    name: &str,
) -> Result<Tensor, BadRequest> {
    let at = |i: usize| format!("input `{name}`, element {i}");
    let t = match dt {
        DatumType::String => {
            let mut v = Vec::with_capacity(leaves.len());
            for (i, x) in leaves.iter().enumerate() {
                match x {
                    Value::String(s) => v.push(s.clone()),
                    _ => return Err(bad(format!("{}: {x} is not a string (string input)", at(i)))),
                }
            }
            return crate::tensors::string_tensor(shape, v).map_err(|e| bad(e.to_string()));
        }
        DatumType::F32 | DatumType::F64 | DatumType::F16 => {
            // null and "NaN" are missing values (tree models route them); "Infinity" too
            let mut v = Vec::with_capacity(leaves.len());
            for (i, x) in leaves.iter().enumerate() {
                v.push(match x {
                    Value::Null => f64::NAN,
                    Value::String(s) => match s.as_str() {
                        "NaN" | "nan" => f64::NAN,
                        "Infinity" | "inf" => f64::INFINITY,
                        "-Infinity" | "-inf" => f64::NEG_INFINITY,
                        _ => return Err(bad(format!("{}: {x} is not a number", at(i)))),
                    },
                    _ => x.as_f64().ok_or_else(|| bad(format!("{}: {x} is not a number", at(i))))?,
                });
            }
            Tensor::from_shape(shape, &v).map_err(|e| bad(e.to_string()))?
        }
        DatumType::Bool => {
            let mut v = Vec::with_capacity(leaves.len());
            for (i, x) in leaves.iter().enumerate() {
                v.push(match x {
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_i64() == Some(0) => false,
                    Value::Number(n) if n.as_i64() == Some(1) => true,
                    _ => return Err(bad(format!("{}: {x} is not a boolean", at(i)))),
                });
            }
            Tensor::from_shape(shape, &v).map_err(|e| bad(e.to_string()))?
        }
        _ => {
            let mut v = Vec::with_capacity(leaves.len());
            for (i, x) in leaves.iter().enumerate() {
                v.push(
                    x.as_i64()
                        .ok_or_else(|| bad(format!("{}: {x} is not an integer ({} input)", at(i), dtype_label(dt))))?,
                );
            }
            Tensor::from_shape(shape, &v).map_err(|e| bad(e.to_string()))?
        }
    };
    if let Some((lo, hi)) = int_bounds(dt) {
        for (i, x) in leaves.iter().enumerate() {
            if let Some(n) = x.as_i64().filter(|n| *n < lo || *n > hi) {
                return Err(bad(format!("{}: {n} is out of range for {}", at(i), dtype_label(dt))));
            }
        }
    }
    Ok(t.cast_to_dt(dt).map_err(|e| bad(format!("input `{name}`: {e}")))?.into_owned())
}

fn dtype_label(dt: DatumType) -> &'static str {
    crate::tensors::dtype_name(dt).unwrap_or("?")
}

/// Bounds of integer types narrower than i64: inputs outside are refused,
/// never wrapped.
fn int_bounds(dt: DatumType) -> Option<(i64, i64)> {
    Some(match dt {
        DatumType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DatumType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DatumType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DatumType::U8 => (0, u8::MAX as i64),
        DatumType::U16 => (0, u16::MAX as i64),
        DatumType::U32 => (0, u32::MAX as i64),
        DatumType::U64 => (0, i64::MAX),
        _ => return None,
    })
}

/// One line describing the inputs, for error messages.
pub fn describe_inputs(inputs: &[TensorSpec]) -> String {
    inputs.iter().map(|i| format!("{}: {} {}", i.name, i.dtype, shape_string(&i.shape))).collect::<Vec<_>>().join(", ")
}

/// Encodes outputs as JSON: `{"outputs": [{name, dtype, shape, data}]}`.
pub fn to_json(names: &[String], outputs: &[Tensor]) -> TractResult<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Response {
        outputs: Vec<NamedTensor>,
    }
    let outputs =
        names.iter().zip(outputs).map(|(n, t)| NamedTensor::from_tensor(n, t)).collect::<TractResult<Vec<_>>>()?;
    let mut v = serde_json::to_vec(&Response { outputs })?;
    v.push(b'\n');
    Ok(v)
}

/// Encodes outputs as CSV: one line per row, the row's values of every output
/// side by side. Outputs must share the batch axis.
pub fn to_csv(names: &[String], outputs: &[Tensor], rows: usize) -> TractResult<Vec<u8>> {
    let mut cols: Vec<(usize, Vec<String>)> = Vec::new();
    for (n, t) in names.iter().zip(outputs) {
        ensure!(
            t.rank() >= 1 && t.shape()[0] == rows,
            "output `{n}` has shape {:?}, which has no batch axis of {rows} rows to write as CSV; ask for JSON",
            t.shape()
        );
        let nt = NamedTensor::from_tensor(n, t)?;
        let strs: Vec<String> = match nt.data {
            crate::tensors::Data::F32(v) => v.iter().map(|x| x.to_string()).collect(),
            crate::tensors::Data::F64(v) => v.iter().map(|x| x.to_string()).collect(),
            crate::tensors::Data::I64(v) => v.iter().map(|x| x.to_string()).collect(),
            crate::tensors::Data::U64(v) => v.iter().map(|x| x.to_string()).collect(),
            crate::tensors::Data::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
            crate::tensors::Data::Str(v) => v.into_iter().map(csv_field).collect(),
        };
        cols.push((t.len() / rows.max(1), strs));
    }
    let mut out = String::new();
    for r in 0..rows {
        let mut first = true;
        for (w, strs) in &cols {
            for s in &strs[r * w..(r + 1) * w] {
                if !first {
                    out.push(',');
                }
                out.push_str(s);
                first = false;
            }
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// A string as one CSV field: quoted (RFC 4180) when it holds a comma, a
/// quote, a line break or surrounding spaces, or is empty.
fn csv_field(s: String) -> String {
    if s.is_empty() || s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// JSON Lines: one row (a JSON array) per line → `{"instances": [...]}`.
pub fn jsonlines_to_instances(bytes: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let text = std::str::from_utf8(bytes).map_err(|_| bad("JSON Lines body is not UTF-8"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("JSON Lines line {}: {e}", i + 1)))?;
        let v = match v {
            Value::Object(mut o) if o.contains_key("features") => o.remove("features").unwrap(),
            other => other,
        };
        rows.push(v);
    }
    Ok(serde_json::json!({ "instances": rows }).to_string().into_bytes())
}

/// One JSON object per row: output name → that row's values.
pub fn to_jsonlines(names: &[String], outputs: &[Tensor], rows: usize) -> TractResult<Vec<u8>> {
    let mut lines = String::new();
    let tensors: Vec<NamedTensor> =
        names.iter().zip(outputs).map(|(n, t)| NamedTensor::from_tensor(n, t)).collect::<TractResult<_>>()?;
    for r in 0..rows {
        let mut obj = serde_json::Map::new();
        for t in &tensors {
            anyhow::ensure!(t.shape.first() == Some(&rows), "output `{}` has no batch axis; ask for JSON", t.name);
            let w = t.shape.iter().skip(1).product::<usize>();
            let v = serde_json::to_value(&t.data)?;
            let slice: Vec<Value> = v.as_array().map(|a| a[r * w..(r + 1) * w].to_vec()).unwrap_or_default();
            obj.insert(
                t.name.clone(),
                if t.shape.len() == 1 { slice.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(slice) },
            );
        }
        lines.push_str(&Value::Object(obj).to_string());
        lines.push('\n');
    }
    Ok(lines.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: dtype.into(), shape, non_finite: false }
    }
    fn n() -> Dim {
        Dim::Symbol("N".into())
    }
    fn f(x: u64) -> Dim {
        Dim::Fixed(x)
    }

    #[test]
    fn csv_rows_become_a_batch() {
        let s = [spec("x", "f32", vec![n(), f(3)])];
        let b = parse(b"1,2,3\n4,5,6\n", Format::Csv, &s).unwrap();
        assert_eq!(b.rows, 2);
        assert_eq!(b.inputs[0].shape(), &[2, 3]);
        let e = parse(b"1,2,3\n4,5\n", Format::Csv, &s).unwrap_err().to_string();
        assert!(e.contains("line 2 has 2 values") && e.contains("takes 3"), "{e}");
        let e = parse(b"1,2,x\n", Format::Csv, &s).unwrap_err().to_string();
        assert!(e.contains("line 1, column 3: `x` is not a number"), "{e}");
    }

    #[test]
    fn json_shapes_are_matched_to_the_input() {
        let s = [spec("x", "f32", vec![n(), f(2)])];
        for body in [
            &b"[[1,2],[3,4]]"[..],
            b"{\"inputs\": [[1,2],[3,4]]}",
            b"{\"instances\": [[1,2],[3,4]]}",
            b"{\"x\": [[1,2],[3,4]]}",
        ] {
            let b = parse(body, Format::Json, &s).unwrap();
            assert_eq!((b.rows, b.inputs[0].shape()), (2, &[2usize, 2][..]));
        }
        let b = parse(b"[1,2]", Format::Json, &s).unwrap();
        assert_eq!(b.inputs[0].shape(), &[1, 2]);
        let e = parse(b"[[1,2,3]]", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("expects shape [N,2]") && e.contains("[1, 3]"), "{e}");
        let e = parse(b"[[1,2],[3]]", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("not a rectangular"), "{e}");
        let e = parse(b"[[1,\"a\"]]", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("is not a number"), "{e}");
        let e = parse(b"{\"y\": [1,2]}", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("expected \"inputs\""), "{e}");
    }

    #[test]
    fn integer_inputs_refuse_fractions_and_overflow() {
        let s = [spec("ids", "i32", vec![n(), f(2)])];
        assert!(parse(b"[[1,2]]", Format::Json, &s).is_ok());
        let e = parse(b"[[1,2.5]]", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("not an integer"), "{e}");
        let e = parse(b"[[1,99999999999]]", Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("out of range for i32"), "{e}");
    }

    #[test]
    fn string_inputs_from_csv_and_json_and_back() {
        let s = [spec("city", "string", vec![n(), f(2)])];
        let b = parse(b"Paris, \"Lyon, France\"\n\"say \"\"hi\"\"\",\"\"\n", Format::Csv, &s).unwrap();
        let want: Vec<String> = ["Paris", "Lyon, France", "say \"hi\"", ""].iter().map(|x| x.to_string()).collect();
        assert_eq!(b.inputs[0], crate::tensors::string_tensor(&[2, 2], want).unwrap());
        let csv = to_csv(&["c".into()], &b.inputs, 2).unwrap();
        assert_eq!(String::from_utf8(csv.clone()).unwrap(), "Paris,\"Lyon, France\"\n\"say \"\"hi\"\"\",\"\"\n");
        assert_eq!(parse(&csv, Format::Csv, &s).unwrap().inputs, b.inputs);
        let j = parse(br#"{"city": [["Paris", "Lyon, France"], ["say \"hi\"", ""]]}"#, Format::Json, &s).unwrap();
        assert_eq!(j.inputs, b.inputs);
        let e = parse(br#"[["Paris", 3]]"#, Format::Json, &s).unwrap_err().to_string();
        assert!(e.contains("element 1: 3 is not a string"), "{e}");
        for (body, says) in [
            (&b"\"Paris,Lyon\n"[..], "no closing quote"),
            (b"\"Paris\"x,Lyon\n", "after a closing quote"),
            (b"Paris\n", "has 1 values"),
        ] {
            let e = parse(body, Format::Csv, &s).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        // numbers in quotes are numbers
        let x = [spec("x", "f32", vec![n(), f(2)])];
        assert_eq!(parse(b"\"1.5\",2\n", Format::Csv, &x).unwrap().inputs[0], tensor2(&[[1.5f32, 2.0]]));
        let js = to_json(&["c".into()], &b.inputs).unwrap();
        let v: Value = serde_json::from_slice(&js).unwrap();
        assert_eq!(v["outputs"][0]["dtype"], "string");
        assert_eq!(v["outputs"][0]["data"][1], "Lyon, France");
    }

    #[test]
    fn csv_output_puts_rows_on_lines() {
        let t = Tensor::from_shape(&[2, 2], &[0.25f32, 0.75, 1.0, 0.0]).unwrap();
        let out = to_csv(&["p".into()], &[t], 2).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "0.25,0.75\n1,0\n");
    }
}
