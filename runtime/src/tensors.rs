//! Host tensors at the runtime's edges: dtype names, JSON values, and the
//! typed data arrays written to responses and test vectors.
//!
//! (Over 600 lines on purpose: the JSON form (`Data`, `NamedTensor`), the
//! stored test vectors and the comparison read and write the same typed
//! arrays, strings included (`read_strings`/`write_strings`, which the OIP
//! codec shares); a third of it is their unit tests, malformed data
//! included.)

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
        DType::String => DatumType::String,
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
        DatumType::String => DType::String,
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
/// Strings come last: read back without its dtype, an array of nothing but
/// "NaN"s and "Infinity"s is taken as floats ([`NamedTensor::to_tensor`]
/// puts such a string tensor right).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    Bool(Vec<bool>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    F32(#[serde(with = "floats")] Vec<f32>),
    F64(#[serde(with = "floats")] Vec<f64>),
    Str(Vec<String>),
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
            DatumType::String => Data::Str(with_plain!(t, String).to_vec()),
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
        if dt == DatumType::String {
            // JSON without its dtype reads strings that all spell non-finite
            // floats ("NaN", "Infinity") as floats: spell them back
            let v: Vec<String> = match &self.data {
                Data::Str(v) => v.clone(),
                Data::F32(v) => v.iter().map(|x| float_word(*x as f64)).collect(),
                Data::F64(v) => v.iter().map(|x| float_word(*x)).collect(),
                _ => bail!("tensor `{}` is of type string; its values are not strings", self.name),
            };
            ensure!(v.len() == n, "tensor `{}`: {} values for shape {:?}", self.name, v.len(), self.shape);
            return string_tensor(&self.shape, v);
        }
        let t = match &self.data {
            Data::Str(_) => bail!("tensor `{}` is of type {}; its values are strings", self.name, self.dtype),
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

/// A string tensor of `shape` (tract's `from_shape` takes `Copy` types only).
pub fn string_tensor(shape: &[usize], v: Vec<String>) -> TractResult<Tensor> {
    let n = v.len();
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, v)
        .map_err(|_| anyhow::anyhow!("{n} strings for shape {shape:?}"))?
        .into_tensor())
}

/// How JSON spells a non-finite float ("NaN", "Infinity", "-Infinity");
/// finite values in Rust's shortest form.
fn float_word(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        x.to_string()
    }
}

/// Values as f64 for numeric comparison.
pub fn to_f64(t: &Tensor) -> TractResult<Vec<f64>> {
    if t.datum_type() == DatumType::Bool {
        return Ok(with_plain!(t, bool).iter().map(|b| *b as u8 as f64).collect());
    }
    Ok(t.cast_to::<f64>()?.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
}

/// The first NaN or infinity of a float tensor, with its index (none for
/// other types); reads the tensor in place, as every request's check does.
pub fn first_non_finite(t: &Tensor) -> Option<(usize, f64)> {
    // a reduction without early exit first, the position only when one is
    // bad: the largest exponent field, as integers (a max over u32 lanes
    // vectorizes; `fold` over `is_finite` did not, and took 9% of
    // fraud-mlp's run at 8192 rows)
    fn first<T: Datum + Copy, B: Ord + Copy + Default>(
        t: &Tensor,
        exponent: impl Fn(T) -> B,
        all_ones: B,
        to: impl Fn(T) -> f64,
    ) -> Option<(usize, f64)> {
        let s = t.try_as_plain_ram().ok()?.as_slice::<T>().ok()?;
        if s.iter().fold(B::default(), |m, x| m.max(exponent(*x))) != all_ones {
            return None;
        }
        s.iter().position(|x| exponent(*x) == all_ones).map(|i| (i, to(s[i])))
    }
    match t.datum_type() {
        #[cfg(target_arch = "x86_64")]
        DatumType::F32 if std::arch::is_x86_feature_detected!("avx2") => {
            /// # Safety
            /// The CPU must have AVX2.
            #[target_feature(enable = "avx2")]
            unsafe fn all_finite(s: &[f32]) -> bool {
                s.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7f80_0000)) != 0x7f80_0000
            }
            let s = t.try_as_plain_ram().ok()?;
            let s = s.as_slice::<f32>().ok()?;
            // SAFETY: AVX2 was detected just above
            if unsafe { all_finite(s) } {
                return None;
            }
            s.iter().position(|x| !x.is_finite()).map(|i| (i, f64::from(s[i])))
        }
        DatumType::F32 => first::<f32, u32>(t, |x| x.to_bits() & 0x7f80_0000, 0x7f80_0000, f64::from),
        DatumType::F64 => first::<f64, u64>(t, |x| x.to_bits() & 0x7ff0_0000_0000_0000, 0x7ff0_0000_0000_0000, |x| x),
        DatumType::F16 => first::<f16, u16>(t, |x| x.to_bits() & 0x7c00, 0x7c00, f16::to_f64),
        _ => None,
    }
}

/// Largest absolute and relative differences between two tensors, and whether
/// every element passes |a-b| <= atol + rtol*|b| (NaN only matches NaN).
/// Strings agree only when equal: a differing one is an unbounded error.
pub fn compare(got: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> TractResult<Comparison> {
    ensure!(
        got.shape() == expected.shape(),
        "shape {:?} differs from the expected {:?}",
        got.shape(),
        expected.shape()
    );
    if got.datum_type() == DatumType::String || expected.datum_type() == DatumType::String {
        ensure!(
            got.datum_type() == expected.datum_type(),
            "type {:?} differs from the expected {:?}",
            got.datum_type(),
            expected.datum_type()
        );
        let worst = with_plain!(got, String).iter().zip(with_plain!(expected, String)).position(|(a, b)| a != b);
        return Ok(Comparison {
            max_abs: if worst.is_some() { f64::INFINITY } else { 0.0 },
            max_rel: if worst.is_some() { f64::INFINITY } else { 0.0 },
            within: worst.is_none(),
            worst_index: worst,
        });
    }
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
    fn test_vectors_round_trip_raw_and_refuse_bad_indexes() {
        let t = |name: &str, data: Data, shape: Vec<usize>| NamedTensor {
            name: name.into(),
            dtype: match &data {
                Data::F32(_) => "f32",
                Data::F64(_) => "f64",
                Data::I64(_) => "i64",
                Data::U64(_) => "u64",
                Data::Bool(_) => "bool",
                Data::Str(_) => "string",
            }
            .into(),
            shape,
            data,
        };
        let tv = TestVectors {
            source: "s".into(),
            atol: 1e-4,
            rtol: 1e-3,
            cases: vec![TestCase {
                inputs: vec![
                    t("x", Data::F32(vec![1.5, f32::NAN, -0.0, f32::INFINITY]), vec![2, 2]),
                    t("n", Data::I64(vec![i64::MIN, 7]), vec![2]),
                ],
                outputs: vec![
                    t("b", Data::Bool(vec![true, false]), vec![2]),
                    t("d", Data::F64(vec![0.1]), vec![]),
                    t("s", Data::Str(vec!["héllo".into(), "".into(), "a,\"b\"\n".into()]), vec![3, 1]),
                ],
            }],
        };
        let (json, bin) = tv.encode().unwrap();
        assert_eq!(bin.len(), 16 + 16 + 2 + 8 + (4 + 6) + 4 + (4 + 6));
        let back = TestVectors::decode(&json, |f| (f == TEST_VECTOR_DATA).then_some(&bin[..])).unwrap();
        // NaN != NaN: compare the bytes
        assert_eq!(back.encode().unwrap(), (json.clone(), bin.clone()));
        // the form bundles carried before: values in the JSON itself
        let legacy = serde_json::to_vec(&tv).unwrap();
        let old = TestVectors::decode(&legacy, |_| None).unwrap();
        assert_eq!(old.cases[0].inputs[1].to_tensor().unwrap(), tensor1(&[i64::MIN, 7]));
        assert_eq!(old.cases[0].outputs[0].to_tensor().unwrap(), tensor1(&[true, false]));
        assert_eq!(back.cases[0].outputs[2].to_tensor().unwrap().shape(), &[3, 1]);
        assert_eq!(old.cases[0].outputs[2], tv.cases[0].outputs[2]);
        // indexes that do not fit the data: errors, no panic
        let text = String::from_utf8(json.clone()).unwrap();
        for (from, to) in [("\"offset\":16", "\"offset\":99999999999"), ("\"len\":16", "\"len\":18446744073709551615")]
        {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            assert!(TestVectors::decode(bad.as_bytes(), |_| Some(&bin[..])).is_err(), "{to}");
        }
        let huge = text.replacen("\"shape\":[2,2]", "\"shape\":[4294967296,4294967296]", 1);
        assert!(TestVectors::decode(huge.as_bytes(), |_| Some(&bin[..])).is_err());
        let strings = text.replacen("\"shape\":[3,1]", "\"shape\":[4294967296,4294967296]", 1);
        assert!(TestVectors::decode(strings.as_bytes(), |_| Some(&bin[..])).is_err());
        assert!(TestVectors::decode(&json, |_| None).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn malformed_string_data_is_named_never_a_panic() {
        let mut ok = Vec::new();
        write_strings(&["ab".to_string(), "ü".to_string()], &mut ok);
        assert_eq!(read_strings(&ok, 2).unwrap(), ["ab", "ü"]);
        for (bytes, n, says) in [
            (&ok[..3], 1, "before its 4-byte length"),
            (&ok[..5], 1, "runs past the data"),
            (&ok[..], 1, "bytes after the last"),
            (&ok[..], 3, "string 2 of 3"),
            (&ok[..], usize::MAX, "before its 4-byte length"),
            (&[1, 0, 0, 0, 0xff][..], 1, "not UTF-8"),
            (&[255, 255, 255, 255][..], 1, "runs past"),
        ] {
            let e = read_strings(bytes, n).unwrap_err().to_string();
            assert!(e.contains(says), "{n} from {bytes:?}: {e}");
        }
    }

    #[test]
    fn strings_compare_by_equality() {
        let s = |v: &[&str]| string_tensor(&[v.len()], v.iter().map(|x| x.to_string()).collect()).unwrap();
        let c = compare(&s(&["a", "b"]), &s(&["a", "b"]), 0.0, 0.0).unwrap();
        assert!(c.within && c.max_abs == 0.0);
        let c = compare(&s(&["a", "b", "c"]), &s(&["a", "B", "c"]), 1.0, 1.0).unwrap();
        assert!(!c.within && c.worst_index == Some(1), "{c:?}");
        assert!(compare(&s(&["1"]), &tensor1(&[1.0f32]), 1.0, 1.0).is_err());
        // strings read back from JSON without their dtype
        let nt = NamedTensor {
            name: "s".into(),
            dtype: "string".into(),
            shape: vec![2],
            data: Data::F32(vec![f32::NAN, f32::INFINITY]),
        };
        assert_eq!(nt.to_tensor().unwrap(), s(&["NaN", "Infinity"]));
        let nt =
            NamedTensor { name: "x".into(), dtype: "f32".into(), shape: vec![1], data: Data::Str(vec!["a".into()]) };
        assert!(nt.to_tensor().unwrap_err().to_string().contains("strings"));
    }

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
    fn the_first_non_finite_element_is_found_in_every_float_type() {
        let f = |v: Vec<f32>| Tensor::from_shape(&[v.len()], &v).unwrap();
        assert_eq!(first_non_finite(&f(vec![1.0; 1000])), None);
        let mut v = vec![0.5f32; 1000];
        v[700] = f32::NEG_INFINITY;
        v[900] = f32::NAN;
        assert_eq!(first_non_finite(&f(v.clone())), Some((700, f64::NEG_INFINITY)));
        let h = f(v.clone()).cast_to::<f16>().unwrap().into_owned();
        assert_eq!(first_non_finite(&h), Some((700, f64::NEG_INFINITY)));
        let d = f(v).cast_to::<f64>().unwrap().into_owned();
        assert_eq!(first_non_finite(&d), Some((700, f64::NEG_INFINITY)));
        assert_eq!(first_non_finite(&Tensor::from_shape(&[2], &[1i64, 2]).unwrap()), None);
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

/// Test vectors as bundles store them: `test_vectors.json` lists the cases
/// with each tensor's name, dtype, shape and where its values lie in
/// `test_vectors.bin` (raw little-endian), so an image model's cases cost
/// their bytes, not several times that as decimal text, and read back in a
/// copy. Bundles of neoc 0.1 before this carried the values in the JSON
/// itself ([`TestVectors`]'s own serde form), which is still read.
pub const TEST_VECTOR_DATA: &str = "test_vectors.bin";

#[derive(Serialize, Deserialize)]
struct StoredVectors {
    source: String,
    atol: f64,
    rtol: f64,
    /// The file holding the values (`test_vectors.bin`).
    data_file: String,
    cases: Vec<StoredCase>,
}

#[derive(Serialize, Deserialize)]
struct StoredCase {
    inputs: Vec<StoredTensor>,
    outputs: Vec<StoredTensor>,
}

#[derive(Serialize, Deserialize)]
struct StoredTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    /// How the values are stored: `f32`, `f64`, `i64`, `u64` (8 bytes
    /// each but f32) or `bool` (one byte each), little-endian; `str`: each
    /// string's UTF-8 bytes after their length as a little-endian u32.
    values: String,
    offset: u64,
    len: u64,
}

impl TestVectors {
    /// The stored form: the index (JSON) and the values (`test_vectors.bin`).
    pub fn encode(&self) -> TractResult<(Vec<u8>, Vec<u8>)> {
        let mut bin = Vec::new();
        let mut store = |t: &NamedTensor| -> StoredTensor {
            let offset = bin.len() as u64;
            let values = match &t.data {
                Data::F32(v) => {
                    v.iter().for_each(|x| bin.extend_from_slice(&x.to_le_bytes()));
                    "f32"
                }
                Data::F64(v) => {
                    v.iter().for_each(|x| bin.extend_from_slice(&x.to_le_bytes()));
                    "f64"
                }
                Data::I64(v) => {
                    v.iter().for_each(|x| bin.extend_from_slice(&x.to_le_bytes()));
                    "i64"
                }
                Data::U64(v) => {
                    v.iter().for_each(|x| bin.extend_from_slice(&x.to_le_bytes()));
                    "u64"
                }
                Data::Bool(v) => {
                    v.iter().for_each(|x| bin.push(*x as u8));
                    "bool"
                }
                Data::Str(v) => {
                    write_strings(v, &mut bin);
                    "str"
                }
            };
            StoredTensor {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                values: values.into(),
                offset,
                len: bin.len() as u64 - offset,
            }
        };
        let cases = self
            .cases
            .iter()
            .map(|c| StoredCase {
                inputs: c.inputs.iter().map(&mut store).collect(),
                outputs: c.outputs.iter().map(&mut store).collect(),
            })
            .collect();
        let stored = StoredVectors {
            source: self.source.clone(),
            atol: self.atol,
            rtol: self.rtol,
            data_file: TEST_VECTOR_DATA.into(),
            cases,
        };
        let mut json = serde_json::to_vec(&stored)?;
        json.push(b'\n');
        Ok((json, bin))
    }

    /// Reads either stored form; `file` gives a bundle file's bytes by name.
    /// Every offset, length and shape is checked against the data, so a
    /// malformed index is an error, never a panic or a huge allocation.
    pub fn decode<'b>(json: &[u8], file: impl Fn(&str) -> Option<&'b [u8]>) -> TractResult<TestVectors> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        if v.get("data_file").is_none() {
            return Ok(serde_json::from_value(v)?);
        }
        let s: StoredVectors = serde_json::from_value(v)?;
        let bin = file(&s.data_file).with_context(|| format!("test vector data `{}` is missing", s.data_file))?;
        let load = |t: &StoredTensor| -> TractResult<NamedTensor> {
            let n = t.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).context("shape overflows")?;
            if t.values == "str" {
                let end = t.offset.checked_add(t.len).filter(|e| *e <= bin.len() as u64);
                let Some(end) = end else { bail!("tensor `{}`: its values lie outside {}", t.name, s.data_file) };
                let data = read_strings(&bin[t.offset as usize..end as usize], n)
                    .with_context(|| format!("tensor `{}` of shape {:?}", t.name, t.shape))?;
                return Ok(NamedTensor {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    data: Data::Str(data),
                });
            }
            let width = match t.values.as_str() {
                "f32" => 4,
                "bool" => 1,
                "f64" | "i64" | "u64" => 8,
                other => bail!("tensor `{}`: unknown value kind `{other}`", t.name),
            };
            let end = t.offset.checked_add(t.len).filter(|e| *e <= bin.len() as u64);
            let (Some(end), Some(want)) = (end, n.checked_mul(width)) else {
                bail!("tensor `{}`: its values lie outside {}", t.name, s.data_file)
            };
            ensure!(want as u64 == t.len, "tensor `{}`: {} bytes for shape {:?}", t.name, t.len, t.shape);
            let bytes = &bin[t.offset as usize..end as usize];
            let data = match width {
                1 => Data::Bool(bytes.iter().map(|b| *b != 0).collect()),
                4 => Data::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
                _ => {
                    let words = bytes.chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).unwrap());
                    match t.values.as_str() {
                        "f64" => Data::F64(words.map(f64::from_le_bytes).collect()),
                        "i64" => Data::I64(words.map(i64::from_le_bytes).collect()),
                        _ => Data::U64(words.map(u64::from_le_bytes).collect()),
                    }
                }
            };
            Ok(NamedTensor { name: t.name.clone(), dtype: t.dtype.clone(), shape: t.shape.clone(), data })
        };
        let cases = s
            .cases
            .iter()
            .map(|c| {
                Ok(TestCase {
                    inputs: c.inputs.iter().map(load).collect::<TractResult<_>>()?,
                    outputs: c.outputs.iter().map(load).collect::<TractResult<_>>()?,
                })
            })
            .collect::<TractResult<_>>()?;
        Ok(TestVectors { source: s.source, atol: s.atol, rtol: s.rtol, cases })
    }

    /// The bytes of the values of one case's inputs.
    pub fn input_bytes(case: &TestCase) -> usize {
        case.inputs
            .iter()
            .map(|t| match &t.data {
                Data::F32(v) => v.len() * 4,
                Data::F64(v) => v.len() * 8,
                Data::I64(v) => v.len() * 8,
                Data::U64(v) => v.len() * 8,
                Data::Bool(v) => v.len(),
                Data::Str(v) => v.iter().map(|s| 4 + s.len()).sum(),
            })
            .sum()
    }
}

/// `n` strings, each a little-endian u32 length then that many bytes of
/// UTF-8, filling `bytes` exactly (test vectors; the Open Inference
/// Protocol's binary BYTES). Nothing is allocated beyond what `bytes` holds.
pub fn read_strings(mut bytes: &[u8], n: usize) -> TractResult<Vec<String>> {
    let mut out = Vec::with_capacity(n.min(bytes.len() / 4));
    for i in 0..n {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            bail!("string {i} of {n}: the data ends before its 4-byte length")
        };
        let len = u32::from_le_bytes(*len) as usize;
        ensure!(len <= rest.len(), "string {i} of {n}: length {len} runs past the data ({} bytes left)", rest.len());
        let (s, rest) = rest.split_at(len);
        out.push(String::from_utf8(s.to_vec()).map_err(|_| anyhow::anyhow!("string {i} of {n} is not UTF-8"))?);
        bytes = rest;
    }
    ensure!(bytes.is_empty(), "{} bytes after the last of {n} strings", bytes.len());
    Ok(out)
}

/// The inverse of [`read_strings`].
pub fn write_strings(v: &[String], out: &mut Vec<u8>) {
    for x in v {
        out.extend_from_slice(&(x.len() as u32).to_le_bytes());
        out.extend_from_slice(x.as_bytes());
    }
}

/// A bundle's test vectors, in memory.
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
