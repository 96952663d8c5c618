//! NumPy's `.npy` format as a request body (`application/x-npy`): one
//! array, for image-sized inputs that JSON would multiply several times
//! over. Versions 1.0–3.0, little-endian or single-byte element types, C
//! order; strings as NumPy's fixed-width `<U` (UTF-32) and `|S` (bytes,
//! which must be UTF-8) arrays. The header is read with a parser of its own (a Python dict
//! literal of three keys); every size it declares is checked against the
//! bytes that follow before anything is allocated.

use neoc_bundle::manifest::{shape_string, TensorSpec};
use tract_core::prelude::*;

use super::{bad, dtype_of, shared_batch_axis, BadRequest, Batch};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Whether a body starts like a `.npy` file.
pub fn is_npy(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// One `.npy` array as the input of a one-input model.
pub fn parse(body: &[u8], inputs: &[TensorSpec]) -> Result<Batch, BadRequest> {
    let [spec] = inputs else {
        return Err(bad(format!(
            "a .npy body holds one array; this model has {} inputs ({}); send JSON with named inputs, or OIP v2 binary data",
            inputs.len(),
            inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    let (elem, shape, data) = read(body)?;
    if !super::fits(&shape, spec) {
        return Err(bad(format!(
            "the .npy array has shape {shape:?}; input `{}` takes {}",
            spec.name,
            shape_string(&spec.shape)
        )));
    }
    let want = dtype_of(spec)?;
    let dt = match elem {
        Elem::Plain(dt) if want == DatumType::String => {
            return Err(bad(format!("the .npy array holds {dt:?}; input `{}` takes strings", spec.name)))
        }
        Elem::Plain(dt) => dt,
        _ if want != DatumType::String => {
            return Err(bad(format!("the .npy array holds strings; input `{}` takes {}", spec.name, spec.dtype)))
        }
        text => {
            let v = strings(text, data)?;
            let t = crate::tensors::string_tensor(&shape, v).map_err(|e| bad(format!(".npy data: {e}")))?;
            let rows = if shared_batch_axis(inputs) { shape.first().copied().unwrap_or(1) } else { 1 };
            if rows == 0 {
                return Err(bad("the .npy array has no rows"));
            }
            return Ok(Batch { rows, inputs: vec![t] });
        }
    };
    let t = if dt == DatumType::Bool {
        // any byte but 0 is true: never an invalid bool in memory
        let v: Vec<bool> = data.iter().map(|b| *b != 0).collect();
        Tensor::from_shape(&shape, &v)
    } else {
        // SAFETY: every element type above is plain old data of `size_of` bytes,
        // and `read` checked that `data` holds exactly the shape's elements
        unsafe { Tensor::from_raw_dt(dt, &shape, data) }
    }
    .map_err(|e| bad(format!(".npy data: {e}")))?;
    let t = if dt == want {
        t
    } else {
        t.cast_to_dt(want)
            .map_err(|e| bad(format!("the .npy array holds {dt:?}, input `{}` takes {}: {e}", spec.name, spec.dtype)))?
            .into_owned()
    };
    let rows = if shared_batch_axis(inputs) { shape.first().copied().unwrap_or(1) } else { 1 };
    if rows == 0 {
        return Err(bad("the .npy array has no rows"));
    }
    Ok(Batch { rows, inputs: vec![t] })
}

/// What a `.npy` array's elements are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    Plain(DatumType),
    /// `<Un`: n UTF-32 code points each, NUL-padded
    Unicode(usize),
    /// `|Sn`: n bytes each, NUL-padded
    Bytes(usize),
}

impl Elem {
    fn width(self) -> usize {
        match self {
            Elem::Plain(dt) => dt.size_of(),
            Elem::Unicode(n) => 4 * n,
            Elem::Bytes(n) => n,
        }
    }
}

/// The strings of fixed-width NumPy text elements, trailing NULs dropped.
fn strings(elem: Elem, data: &[u8]) -> Result<Vec<String>, BadRequest> {
    let width = elem.width();
    if width == 0 {
        // `<U0`: every element is empty
        return Ok(vec![]);
    }
    data.chunks_exact(width)
        .enumerate()
        .map(|(i, c)| match elem {
            Elem::Unicode(_) => c
                .chunks_exact(4)
                .map(|u| u32::from_le_bytes(u.try_into().expect("4 bytes")))
                .take_while(|u| *u != 0)
                .map(|u| char::from_u32(u).ok_or_else(|| bad(format!(".npy string {i}: {u:#x} is not a character"))))
                .collect(),
            _ => {
                let end = c.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                String::from_utf8(c[..end].to_vec()).map_err(|_| {
                    bad(format!(".npy string {i} is not UTF-8\nhint: save text as str (dtype <U), not bytes"))
                })
            }
        })
        .collect()
}

/// The numeric or boolean element type of a `.npy` descr.
fn plain_type(descr: &str) -> Result<DatumType, BadRequest> {
    Ok(match descr {
        "<f4" => DatumType::F32,
        "<f8" => DatumType::F64,
        "<f2" => DatumType::F16,
        "<i8" => DatumType::I64,
        "<i4" => DatumType::I32,
        "<i2" => DatumType::I16,
        "|i1" => DatumType::I8,
        "<u8" => DatumType::U64,
        "<u4" => DatumType::U32,
        "<u2" => DatumType::U16,
        "|u1" => DatumType::U8,
        "|b1" => DatumType::Bool,
        other => {
            return Err(bad(format!(
                ".npy element type `{other}` is not supported (little-endian numbers, booleans and <U/|S strings are)"
            )))
        }
    })
}

/// The element type, shape and data bytes of a `.npy` body.
fn read(body: &[u8]) -> Result<(Elem, Vec<usize>, &[u8]), BadRequest> {
    if !is_npy(body) || body.len() < 10 {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start): (usize, usize) = match body[6] {
        1 => (u16::from_le_bytes([body[8], body[9]]) as usize, 10),
        2 | 3 if body.len() >= 12 => (u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize, 12),
        v => return Err(bad(format!(".npy version {v}.{} is not supported (1.0 to 3.0 are)", body[7]))),
    };
    let end =
        start.checked_add(header_len).filter(|e| *e <= body.len()).ok_or_else(|| bad(".npy header is truncated"))?;
    let header = std::str::from_utf8(&body[start..end]).map_err(|_| bad(".npy header is not text"))?;
    let value_of = |key: &str| -> Result<&str, BadRequest> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| bad(format!(".npy header has no '{key}'")))?;
        let rest = header[at + key.len() + 2..].trim_start();
        rest.strip_prefix(':').map(str::trim_start).ok_or_else(|| bad(format!(".npy header: '{key}' has no value")))
    };
    let descr = value_of("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad(".npy header: 'descr' is not a string"))?;
    let text_width = |prefix: &str| descr.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
    let elem = if let Some(n) = text_width("<U") {
        Elem::Unicode(n)
    } else if let Some(n) = text_width("|S") {
        Elem::Bytes(n)
    } else if descr == "|O" {
        return Err(bad(
            ".npy array of Python objects cannot be read without pickle\nhint: save strings as a fixed-width array: a.astype(str)",
        ));
    } else {
        Elem::Plain(plain_type(descr)?)
    };
    if value_of("fortran_order")?.starts_with("True") {
        return Err(bad(".npy array is in Fortran order\nhint: save np.ascontiguousarray(a) instead"));
    }
    let shape_text = value_of("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(".npy header: 'shape' is not a tuple"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(part.parse::<usize>().map_err(|_| bad(format!(".npy header: dimension `{part}` is not a size")))?);
    }
    if shape.len() > 32 {
        return Err(bad(format!(".npy array has rank {}; at most 32 is accepted", shape.len())));
    }
    let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).ok_or_else(|| bad(".npy shape overflows"))?;
    let bytes = n.checked_mul(elem.width()).ok_or_else(|| bad(".npy shape overflows"))?;
    let data = &body[end..];
    if data.len() != bytes {
        return Err(bad(format!(".npy data holds {} bytes; shape {shape:?} of {descr} needs {bytes}", data.len())));
    }
    Ok((elem, shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoc_bundle::manifest::Dim;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = MAGIC.to_vec();
        v.extend([1, 0]);
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend(data);
        v
    }

    fn spec(shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: "x".into(), dtype: "f32".into(), shape, non_finite: false }
    }

    #[test]
    fn arrays_become_inputs_and_bad_ones_are_refused() {
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|x| x.to_le_bytes()).collect();
        let s = [spec(vec![Dim::Symbol("N".into()), Dim::Fixed(3)])];
        let b = parse(&npy("<f4", "(2, 3)", &data), &s).unwrap();
        assert_eq!((b.rows, b.inputs[0].shape()), (2, &[2usize, 3][..]));
        // f64 converted to the input's f32
        let d64: Vec<u8> = [1f64, 2., 3.].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = parse(&npy("<f8", "(1, 3)", &d64), &s).unwrap();
        assert_eq!(b.inputs[0], tensor2(&[[1f32, 2., 3.]]));
        let e = |body: Vec<u8>| parse(&body, &s).unwrap_err().0;
        let eight: Vec<u8> = [0f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(e(npy("<f4", "(2, 4)", &eight)).contains("takes [N,3]"));
        assert!(e(npy("<f4", "(2, 3)", &data[..20])).contains("needs 24"));
        assert!(e(npy(">f4", "(2, 3)", &data)).contains("not supported"));
        assert!(e(npy("<f4", "(99999999999, 99999999999, 9999999)", &data)).contains("overflows"));
        assert!(e(npy("<f4", "(2, x)", &data)).contains("not a size"));
        assert!(e(b"\x93NUMPY\x01\x00\xff\xff{".to_vec()).contains("truncated"));
        let mut f = npy("<f4", "(2, 3)", &data);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(e(f).contains("Fortran"));
    }

    #[test]
    fn fixed_width_text_arrays_become_string_inputs() {
        let s = [TensorSpec {
            name: "t".into(),
            dtype: "string".into(),
            shape: vec![Dim::Symbol("N".into())],
            non_finite: false,
        }];
        // np.array(["héllo", "a"]) is <U5: UTF-32, NUL-padded
        let u: Vec<u8> = "héllo".chars().chain("a\0\0\0\0".chars()).flat_map(|c| (c as u32).to_le_bytes()).collect();
        let want = tensor1(&["héllo".to_string(), "a".to_string()]);
        assert_eq!(parse(&npy("<U5", "(2,)", &u), &s).unwrap().inputs[0], want);
        let b = ["héllo".as_bytes(), b"a\0\0\0\0\0"].concat();
        assert_eq!(parse(&npy("|S6", "(2,)", &b), &s).unwrap().inputs[0], want);
        let e = |body: Vec<u8>| parse(&body, &s).unwrap_err().0;
        assert!(e(npy("|S1", "(1,)", &[0xff])).contains("not UTF-8"));
        assert!(e(npy("<U1", "(1,)", &0xd800u32.to_le_bytes())).contains("not a character"));
        assert!(e(npy("<U5", "(3,)", &u)).contains("needs 60"));
        assert!(e(npy("|O", "(1,)", &[0; 8])).contains("astype(str)"));
        assert!(e(npy("<f4", "(1,)", &[0; 4])).contains("takes strings"));
        let x = [spec(vec![Dim::Symbol("N".into())])];
        assert!(parse(&npy("<U5", "(2,)", &u), &x).unwrap_err().0.contains("holds strings"));
    }
}
