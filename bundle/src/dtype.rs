//! Element types of model inputs and outputs: the one table of their names
//! — as manifests spell them (`f32`), as the Open Inference Protocol does
//! (`FP32`) — and their sizes. Engines map `DType` to their own types.
//! Strings (`string`, OIP `BYTES`: UTF-8 text of any length, as ONNX's
//! STRING tensors hold) have no fixed size.

/// An element type a bundle's inputs and outputs may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// UTF-8 text, one string per element.
    String,
}

/// (type, manifest name, OIP datatype, bytes per element; 0: variable)
const TABLE: [(DType, &str, &str, usize); 13] = [
    (DType::F32, "f32", "FP32", 4),
    (DType::F64, "f64", "FP64", 8),
    (DType::F16, "f16", "FP16", 2),
    (DType::I64, "i64", "INT64", 8),
    (DType::I32, "i32", "INT32", 4),
    (DType::I16, "i16", "INT16", 2),
    (DType::I8, "i8", "INT8", 1),
    (DType::U64, "u64", "UINT64", 8),
    (DType::U32, "u32", "UINT32", 4),
    (DType::U16, "u16", "UINT16", 2),
    (DType::U8, "u8", "UINT8", 1),
    (DType::Bool, "bool", "BOOL", 1),
    (DType::String, "string", "BYTES", 0),
];

impl DType {
    fn row(self) -> &'static (DType, &'static str, &'static str, usize) {
        TABLE.iter().find(|r| r.0 == self).expect("every DType is in the table")
    }

    /// From a manifest's spelling (`f32`, `i64`, `bool`, …).
    pub fn parse(name: &str) -> Option<DType> {
        TABLE.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// From a name a user may type (`--input x=1,4:float32`): the manifest's
    /// spelling, NumPy's (`float32`, `int64`, `uint8`) or C's (`float`,
    /// `double`), in any case.
    pub fn from_user(name: &str) -> Option<DType> {
        let n = name.to_ascii_lowercase();
        DType::parse(&n).or(match n.as_str() {
            "float32" | "float" => Some(DType::F32),
            "float64" | "double" => Some(DType::F64),
            "float16" | "half" => Some(DType::F16),
            "int64" => Some(DType::I64),
            "int32" => Some(DType::I32),
            "int16" => Some(DType::I16),
            "int8" => Some(DType::I8),
            "uint64" => Some(DType::U64),
            "uint32" => Some(DType::U32),
            "uint16" => Some(DType::U16),
            "uint8" => Some(DType::U8),
            "boolean" => Some(DType::Bool),
            "str" | "bytes" | "object" => Some(DType::String),
            _ => None,
        })
    }

    /// From an Open Inference Protocol datatype (`FP32`, `INT64`, …).
    pub fn from_oip(name: &str) -> Option<DType> {
        TABLE.iter().find(|r| r.2 == name).map(|r| r.0)
    }

    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The Open Inference Protocol's datatype.
    pub fn oip(self) -> &'static str {
        self.row().2
    }

    /// Bytes per element, little-endian on the wire; `None` for strings,
    /// whose elements each carry their own length.
    pub fn size(self) -> Option<usize> {
        Some(self.row().3).filter(|n| *n > 0)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (t, name, oip, size) in TABLE {
            assert_eq!(DType::parse(name), Some(t));
            assert_eq!(DType::from_oip(oip), Some(t));
            assert_eq!((t.name(), t.oip(), t.size().unwrap_or(0)), (name, oip, size));
        }
        assert_eq!(DType::String.size(), None);
        assert_eq!(DType::from_oip("BYTES"), Some(DType::String));
        assert_eq!(DType::parse("FP32"), None);
        assert_eq!(DType::from_user("Float32"), Some(DType::F32));
        assert_eq!(DType::from_user("I64"), Some(DType::I64));
        assert_eq!(DType::from_user("complex64"), None);
    }
}
