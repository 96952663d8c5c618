//! Host tensors at the runtime's edges: dtype names, JSON values, and the
//! typed data arrays written to responses and test vectors.

use anyhow::{bail, ensure, Context};
use neoc_bundle::dtype::DType;
use serde::{Deserialize, Serialize};
use tract_core::prelude::*;

/// The `len` values of an f32 constant that varies at most along `axis` of
/// a tensor of rank `rank` (a per-channel scale or bias): every other axis
/// of the constant has extent 1, `axis` has 1 or `len`. `None` otherwise.
pub fn values_along(t: &Tensor, rank: usize, axis: usize, len: usize) -> TractResult<Option<Vec<f32>>> {
    if t.datum_type() != f32::datum_type()
        || t.rank() != rank
        || t.shape().iter().enumerate().any(|(i, d)| *d != 1 && !(i == axis && *d == len))
    {
        return Ok(None);
    }
    let v = t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some(if v.len() == len { v } else { vec![v[0]; len] }))
}

/// tract's datum type for a bundle's element type.
pub fn datum_type_of(t: DType) -> DatumType {
    match t {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::I16 => DatumType::I16,
        DType::I8 => DatumType::I8,
        DType::U64 => DatumType::U64,
        DType::U32 => DatumType::U32,
        DType::U16 => DatumType::U16,
        DType::U8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
    }
}

/// The bundle element type of one of tract's datum types, if it has one.
pub fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I64 => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::I16 => DType::I16,
        DatumType::I8 => DType::I8,
        DatumType::U64 => DType::U64,
        DatumType::U32 => DType::U32,
        DatumType::U16 => DType::U16,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

/// tract's datum type for a manifest's dtype name (`f32`, `i64`, …).
pub fn datum_type(name: &str) -> Option<DatumType> {
    DType::parse(name).map(datum_type_of)
}

/// The manifest's name for one of tract's datum types.
pub fn dtype_name(dt: DatumType) -> Option<&'static str> {
    dtype_of(dt).map(DType::name)
}

/// Flat tensor data, serialized as a JSON array of the element type (f32
/// values print in their shortest round-trip form; NaN and infinities, which
/// JSON numbers cannot hold, as the strings "NaN", "Infinity", "-Infinity").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    Bool(Vec<bool>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    F32(#[serde(with = "floats")] Vec<f32>),
    F64(#[serde(with = "floats")] Vec<f64>),
}

/// JSON arrays of floats that may hold non-finite values.
pub(crate) mod floats {
    use serde::de::{Deserializer, Error};
    use serde::ser::{SerializeSeq, Serializer};
    use serde::Deserialize;

    pub trait Float: Copy + serde::Serialize + std::str::FromStr {
        fn from_f64(v: f64) -> Self;
        fn is_finite_(self) -> bool;
        fn is_nan_(self) -> bool;
        fn is_sign_negative_(self) -> bool;
    }
    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                fn from_f64(v: f64) -> Self {
                    v as $t
                }
                fn is_finite_(self) -> bool {
                    self.is_finite()
                }
                fn is_nan_(self) -> bool {
                    self.is_nan()
                }
                fn is_sign_negative_(self) -> bool {
                    self.is_sign_negative()
                }
            }
        };
    }
    float!(f32);
    float!(f64);

    pub fn serialize<S: Serializer, T: Float>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            if x.is_finite_() {
                seq.serialize_element(x)?;
            } else if x.is_nan_() {
                seq.serialize_element("NaN")?;
            } else if x.is_sign_negative_() {
                seq.serialize_element("-Infinity")?;
            } else {
                seq.serialize_element("Infinity")?;
            }
        }
        seq.end()
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Num(f64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Float>(d: D) -> Result<Vec<T>, D::Error> {
        let items = Vec::<Item>::deserialize(d)?;
        items
            .into_iter()
            .map(|i| match i {
                Item::Num(v) => Ok(T::from_f64(v)),
                Item::Str(s) => match s.as_str() {
                    "NaN" => Ok(T::from_f64(f64::NAN)),
                    "Infinity" => Ok(T::from_f64(f64::INFINITY)),
                    "-Infinity" => Ok(T::from_f64(f64::NEG_INFINITY)),
                    other => Err(D::Error::custom(format!("`{other}` is not a number"))),
                },
            })
            .collect()
    }
}

/// A named tensor as written in JSON responses and test vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

macro_rules! with_plain {
    ($t:expr, $ty:ty) => {
        $t.try_as_plain_ram()?.as_slice::<$ty>()?
    };
}

impl NamedTensor {
    pub fn from_tensor(name: &str, t: &Tensor) -> TractResult<NamedTensor> {
        let dt = t.datum_type();
        let data = match dt {
            DatumType::F32 => Data::F32(with_plain!(t, f32).to_vec()),
            DatumType::F16 => Data::F32(t.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()),
            DatumType::F64 => Data::F64(with_plain!(t, f64).to_vec()),
            DatumType::Bool => Data::Bool(with_plain!(t, bool).to_vec()),
            DatumType::U64 => Data::U64(with_plain!(t, u64).to_vec()),
            DatumType::I64
            | DatumType::I32
            | DatumType::I16
            | DatumType::I8
            | DatumType::U32
            | DatumType::U16
            | DatumType::U8 => Data::I64(t.cast_to::<i64>()?.try_as_plain_ram()?.as_slice::<i64>()?.to_vec()),
            other => bail!("output `{name}` has type {other:?}, which neorun cannot encode"),
        };
        Ok(NamedTensor {
            name: name.to_string(),
            dtype: dtype_name(dt).unwrap_or("unknown").to_string(),
            shape: t.shape().to_vec(),
            data,
        })
    }

    /// Rebuilds the tract tensor, in the dtype recorded.
    pub fn to_tensor(&self) -> TractResult<Tensor> {
        let dt = datum_type(&self.dtype).with_context(|| format!("unknown dtype {}", self.dtype))?;
        let n: usize = self.shape.iter().product();
        let t = match &self.data {
            Data::F32(v) => Tensor::from_shape(&self.shape, v)?,
            Data::F64(v) => Tensor::from_shape(&self.shape, v)?,
            Data::I64(v) => Tensor::from_shape(&self.shape, v)?,
            Data::U64(v) => Tensor::from_shape(&self.shape, v)?,
            Data::Bool(v) => Tensor::from_shape(&self.shape, v)?,
        };
        ensure!(t.len() == n, "tensor `{}`: {} values for shape {:?}", self.name, t.len(), self.shape);
        Ok(t.cast_to_dt(dt)?.into_owned())
    }
}

/// Values as f64 for numeric comparison.
pub fn to_f64(t: &Tensor) -> TractResult<Vec<f64>> {
    if t.datum_type() == DatumType::Bool {
        return Ok(with_plain!(t, bool).iter().map(|b| *b as u8 as f64).collect());
    }
    Ok(t.cast_to::<f64>()?.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
}

/// Largest absolute and relative differences between two tensors, and whether
/// every element passes |a-b| <= atol + rtol*|b| (NaN only matches NaN).
pub fn compare(got: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> TractResult<Comparison> {
    ensure!(
        got.shape() == expected.shape(),
        "shape {:?} differs from the expected {:?}",
        got.shape(),
        expected.shape()
    );
    let a = to_f64(got)?;
    let b = to_f64(expected)?;
    let mut c = Comparison { max_abs: 0.0, max_rel: 0.0, within: true, worst_index: None };
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        if x.is_nan() && y.is_nan() {
            continue;
        }
        // equal values (infinities of one sign included) agree exactly; any
        // other pair with a NaN or an infinity is an unbounded error, never
        // within tolerance (inf - inf is NaN, and inf <= atol + rtol*inf)
        let abs = if x == y {
            0.0
        } else {
            let d = (x - y).abs();
            if d.is_finite() {
                d
            } else {
                f64::INFINITY
            }
        };
        let rel = if y.abs() > 0.0 {
            abs / y.abs()
        } else if abs == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        if abs > c.max_abs {
            c.max_abs = abs;
            c.worst_index = Some(i);
        }
        c.max_rel = c.max_rel.max(rel);
        if abs.is_infinite() || abs > atol + rtol * y.abs() {
            c.within = false;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinities_agree_only_with_themselves() {
        let t = |v: &[f32]| Tensor::from_shape(&[v.len()], v).unwrap();
        let c = compare(&t(&[f32::INFINITY, 1.0]), &t(&[f32::INFINITY, 1.0]), 1e-4, 1e-4).unwrap();
        assert!(c.within && c.max_abs == 0.0, "{c:?}");
        for (a, b) in [(f32::INFINITY, f32::NEG_INFINITY), (f32::INFINITY, 1.0), (1.0, f32::INFINITY), (f32::NAN, 1.0)]
        {
            let c = compare(&t(&[a]), &t(&[b]), 1e-4, 1e-4).unwrap();
            assert!(!c.within && c.max_abs.is_infinite(), "{a} vs {b}: {c:?}");
        }
    }

    #[test]
    fn non_finite_floats_round_trip_through_json() {
        let d = Data::F32(vec![1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1]);
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, r#"[1.5,"NaN","Infinity","-Infinity",0.1]"#);
        match serde_json::from_str::<Data>(&s).unwrap() {
            Data::F32(v) => {
                assert!(v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::NEG_INFINITY && v[4] == 0.1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(serde_json::from_str::<Data>("[1,2]").unwrap(), Data::I64(_)));
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub max_abs: f64,
    pub max_rel: f64,
    pub within: bool,
    pub worst_index: Option<usize>,
}

/// Test vectors stored in bundles (`test_vectors.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestVectors {
    /// Where the expected outputs come from.
    pub source: String,
    pub atol: f64,
    pub rtol: f64,
    pub cases: Vec<TestCase>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub inputs: Vec<NamedTensor>,
    pub outputs: Vec<NamedTensor>,
}
