//! Open Inference Protocol v2 infer requests (JSON, and JSON followed by
//! binary tensors) on arbitrary bodies; the first two bytes choose the
//! `Inference-Header-Content-Length`. The defect that once killed the
//! server (a wrapping element count) lives here.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neoc_bundle::manifest::{Dim, TensorSpec};
use neoc_runtime::codec::oip::decode;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let inputs = [
        TensorSpec { name: "x".into(), dtype: "f32".into(), shape: vec![Dim::Symbol("N".into()), Dim::Fixed(4)] },
        TensorSpec { name: "ids".into(), dtype: "i64".into(), shape: vec![Dim::Fixed(2), Dim::Fixed(3)] },
    ];
    let outputs =
        [TensorSpec { name: "y".into(), dtype: "f32".into(), shape: vec![Dim::Symbol("N".into()), Dim::Fixed(1)] }];
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body = &data[2..];
    let header = if split == 0 { None } else { Some(split.min(body.len() + 1)) };
    let _ = decode(body, header, &inputs, &outputs);
});
