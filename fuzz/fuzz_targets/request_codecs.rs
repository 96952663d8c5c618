//! The request parsers (CSV, JSON, JSON Lines, .npy) on arbitrary bodies, for a
//! model with one float input of symbolic batch and one with two int inputs.
//! Every size they compute comes from the request: it must be checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neoc_bundle::manifest::{Dim, TensorSpec};
use neoc_runtime::codec::{jsonlines_to_instances, parse, Format};

fn spec(name: &str, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec { name: name.into(), dtype: dtype.into(), shape }
}

fuzz_target!(|data: &[u8]| {
    let one = [spec("features", "f32", vec![Dim::Symbol("N".into()), Dim::Fixed(30)])];
    let two = [
        spec("a", "i32", vec![Dim::Symbol("N".into()), Dim::Fixed(2)]),
        spec("b", "i64", vec![Dim::Symbol("N".into()), Dim::Fixed(2)]),
    ];
    for format in [Format::Csv, Format::Json, Format::Npy] {
        let _ = parse(data, format, &one);
        let _ = parse(data, format, &two);
    }
    let _ = Format::sniff(data);
    let _ = jsonlines_to_instances(data);
});
