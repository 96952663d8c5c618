//! The bodies of neoc's fuzz targets: one function per target, each taking
//! arbitrary bytes. Each must return, whatever the bytes: no panic, no hang,
//! no allocation without bound, and the invariants it asserts hold.
//! `fuzz/fuzz_targets/*.rs` hand them to libFuzzer (`bash bench/fuzz/run.sh`,
//! nightly); [`smoke`] runs them on stable over the seeds and mutations of
//! them, which is how CI keeps them building and running.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use neoc_bundle::manifest::{Dim, TensorSpec};
use neoc_bundle::unpack::{self, Limits};
use tract_core::prelude::*;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name its `fuzz/fuzz_targets/NAME.rs` has.
pub const TARGETS: &[(&str, Target)] = &[
    ("bundle_reader", bundle_reader),
    ("unpack", unpack),
    ("request_codecs", request_codecs),
    ("oip_request", oip_request),
    ("xgboost", xgboost),
    ("lightgbm", lightgbm),
    ("onnx_preflight", onnx_preflight),
    ("nnef_round_trip", nnef_round_trip),
];

/// The bundle reader: the container (canonical tar), the manifest and the
/// signature framing, with unsigned bundles allowed so that the digest and
/// manifest checks are reached.
pub fn bundle_reader(data: &[u8]) {
    use neoc_bundle::container::{read_from, Trust};
    let _ = read_from(data, data.len() as u64, &Trust::KeysOrUnsigned(Vec::new()));
    let _ = neoc_bundle::manifest::Manifest::from_bytes(data);
}

/// The model-tarball unpacker (gzip or plain tar) with small limits: the
/// listing and the unpacking agree on the files, only the files chosen are
/// written, and nothing lands outside the destination.
pub fn unpack(data: &[u8]) {
    // in memory where there is a tmpfs: the filesystem bounds the speed
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("a temp dir");
    let archive = dir.path().join("m.tar.gz");
    std::fs::write(&archive, data).expect("writing the input");
    let limits = Limits { max_entries: 64, max_bytes: 1 << 20, max_stream: 4 << 20, max_ratio: 200 };
    let listed = unpack::list(&archive, limits);
    let all = dir.path().join("all");
    std::fs::create_dir(&all).expect("a destination");
    let unpacked = unpack::unpack(&archive, &all, limits);
    if let (Ok(listed), Ok(unpacked)) = (&listed, &unpacked) {
        let names: Vec<_> = listed.iter().map(|l| l.path.clone()).collect();
        assert_eq!(names, unpacked.files, "list and unpack disagree on the files");
        for l in listed {
            let on_disk = std::fs::metadata(all.join(&l.path)).expect("an unpacked file").len();
            assert_eq!(on_disk, l.size, "{}: listed and unpacked sizes differ", l.path.display());
            assert!(l.head.len() as u64 == l.size.min(unpack::HEAD_BYTES as u64), "{}: a short head", l.path.display());
        }
        if let Some(first) = listed.first() {
            let one = dir.path().join("one");
            std::fs::create_dir(&one).expect("a destination");
            let u = unpack::unpack_only(&archive, &one, limits, &|p| p == first.path).expect("unpacked once already");
            assert_eq!(u.files, vec![first.path.clone()], "unpack_only wrote other files");
        }
    }
    // nothing may land outside the destinations
    for e in std::fs::read_dir(dir.path()).expect("listing") {
        let n = e.expect("an entry").file_name();
        assert!(["m.tar.gz", "all", "one"].iter().any(|k| n == *k), "unpack wrote {n:?} outside its destination");
    }
}

fn spec(name: &str, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec { name: name.into(), dtype: dtype.into(), shape, non_finite: false }
}

/// The request parsers (CSV, JSON, JSON Lines, .npy) for a model with one
/// float input of symbolic batch and one with two int inputs: every size
/// they compute comes from the request and must be checked.
pub fn request_codecs(data: &[u8]) {
    use neoc_runtime::codec::{jsonlines_to_instances, parse, Format};
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
}

/// Open Inference Protocol v2 infer requests (JSON, and JSON followed by
/// binary tensors); the first two bytes choose the
/// `Inference-Header-Content-Length`.
pub fn oip_request(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let inputs = [
        spec("x", "f32", vec![Dim::Symbol("N".into()), Dim::Fixed(4)]),
        spec("ids", "i64", vec![Dim::Fixed(2), Dim::Fixed(3)]),
    ];
    let outputs = [spec("y", "f32", vec![Dim::Symbol("N".into()), Dim::Fixed(1)])];
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body = &data[2..];
    let header = if split == 0 { None } else { Some(split.min(body.len() + 1)) };
    let _ = neoc_runtime::codec::oip::decode(body, header, &inputs, &outputs);
}

/// A tree model the importer accepted must pass the runtime's own checks
/// (every index in range, every feature one the model has): else neoc
/// would sign a bundle that neorun refuses, or one that reads the wrong
/// feature.
fn check_forest(tm: &neoc_compiler::trees::TreeModel) {
    if let Err(e) = tm.forest.validate() {
        panic!("the importer accepted a forest the runtime refuses: {e}");
    }
}

/// XGBoost's JSON and UBJSON model formats.
pub fn xgboost(data: &[u8]) {
    if let Ok(tm) = neoc_compiler::trees::xgboost_bytes(data) {
        check_forest(&tm);
    }
}

/// LightGBM's text model format.
pub fn lightgbm(data: &[u8]) {
    if let Ok(tm) = neoc_compiler::trees::lightgbm_str(&String::from_utf8_lossy(data)) {
        check_forest(&tm);
    }
}

/// The ONNX coverage pre-flight (and the `value_info` rewrites before it)
/// on any protobuf that decodes as a model.
pub fn onnx_preflight(data: &[u8]) {
    let onnx = tract_onnx::onnx();
    let Ok(mut proto) = onnx.proto_model_for_read(&mut &data[..]) else { return };
    let Some(graph) = proto.graph.as_mut() else { return };
    let _ = neoc_compiler::import::coverage(graph, &onnx);
    let _ = neoc_compiler::onnx_prep::declared_ranks(graph);
    neoc_compiler::onnx_prep::strip_value_info(graph);
    assert!(!neoc_compiler::onnx_prep::has_value_info(graph), "value_info left after strip_value_info");
}

/// The NNEF writer → reader round trip that a bundle depends on, for
/// arbitrary names and text properties: the bytes split at U+0001 give the
/// input name, the node name, the output label, then property keys and
/// values. Whatever neoc writes must read back, with the same graph and
/// every property carried beside it. (Running the model read back is left
/// to the tests: it would halve the executions a fuzz run gets.)
pub fn nnef_round_trip(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let input = parts.next().unwrap_or_default().to_string();
    let node = parts.next().unwrap_or_default().to_string();
    let output = parts.next().unwrap_or_default().to_string();
    // names as importers give them: not empty, and unique
    if input.is_empty() || node.is_empty() || output.is_empty() || input == node || node == output || input == output {
        return;
    }
    let mut props = BTreeMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if !k.is_empty() {
            props.insert(k.to_string(), v.to_string());
        }
    }
    let build = || -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let x = m.add_source(&input, f32::fact([1, 4]))?;
        let y = m.wire_node(&node, tract_core::ops::math::abs(), &[x])?[0];
        m.set_outlet_label(y, output.clone())?;
        m.select_output_outlets(&[y])?;
        for (k, v) in &props {
            m.properties.insert(k.clone(), tensor0(v.clone()).into_arc_tensor());
        }
        Ok(m)
    };
    let Ok(mut model) = build() else { return };
    // made once: building the registries costs more than a round trip
    static NNEF: std::sync::OnceLock<tract_nnef::internal::Nnef> = std::sync::OnceLock::new();
    let nnef = NNEF.get_or_init(neoc_runtime::engine::nnef);
    let Ok((tar, metadata)) = neoc_compiler::pipeline::write_nnef(&mut model, nnef) else { return };
    assert_eq!(metadata, props, "the text properties were not all carried");
    let back = nnef.model_for_read(&mut &tar[..]).unwrap_or_else(|e| {
        panic!("neoc wrote an NNEF model tract cannot read back ({e:#}): names {input:?} {node:?} {output:?}")
    });
    assert_eq!(back.nodes().len(), 2, "the graph changed in the round trip");
    let fact = back.output_fact(0).expect("an output");
    assert_eq!((fact.datum_type, fact.shape.as_concrete()), (f32::datum_type(), Some(&[1usize, 4][..])));
}

/// Deterministic byte mutations of `seed`, in the spirit of libFuzzer's:
/// flips, insertions of interesting values, deletions, duplications, and
/// splices with `other`.
pub fn mutate(seed: &[u8], other: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        // splitmix64
        *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = seed.to_vec();
    for _ in 0..1 + next() % 4 {
        let at = if out.is_empty() { 0 } else { (next() as usize) % out.len() };
        match next() % 7 {
            0 if !out.is_empty() => out[at] ^= 1 << (next() % 8),
            1 if !out.is_empty() => out[at] = next() as u8,
            2 => {
                let v: &[u8] = match next() % 6 {
                    0 => b"0",
                    1 => b"-1",
                    2 => b"4294967296",
                    3 => b"1e308",
                    4 => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                    _ => b"\x00",
                };
                out.splice(at..at, v.iter().copied());
            }
            3 if !out.is_empty() => {
                let n = 1 + (next() as usize) % 16.min(out.len() - at);
                out.drain(at..at + n);
            }
            4 if !out.is_empty() => {
                let n = 1 + (next() as usize) % 64.min(out.len() - at);
                let chunk = out[at..at + n].to_vec();
                out.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let from = (next() as usize) % other.len();
                let n = 1 + (next() as usize) % 128.min(other.len() - from);
                out.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// What [`smoke`] did for one target.
#[derive(Debug)]
pub struct Smoked {
    pub runs: u64,
    /// The slowest single input.
    pub slowest: Duration,
}

/// Runs `target` over each seed, then over mutations of them for `budget`.
/// A panic propagates (the caller sees the input: it is printed first when
/// `NEOC_FUZZ_VERBOSE` is set); an input slower than `slow` fails.
pub fn smoke(target: Target, seeds: &[Vec<u8>], budget: Duration, slow: Duration) -> Smoked {
    let verbose = std::env::var_os("NEOC_FUZZ_VERBOSE").is_some();
    let mut done = Smoked { runs: 0, slowest: Duration::ZERO };
    let mut one = |input: &[u8]| {
        if verbose {
            eprintln!("input ({} bytes): {:02x?}", input.len(), &input[..input.len().min(256)]);
        }
        let t = Instant::now();
        target(input);
        let took = t.elapsed();
        assert!(took < slow, "one input took {took:?}: {:02x?}", &input[..input.len().min(256)]);
        done.runs += 1;
        done.slowest = done.slowest.max(took);
    };
    for s in seeds {
        one(s);
    }
    if seeds.is_empty() {
        return done;
    }
    let mut rng = 0x5eed_u64;
    let end = Instant::now() + budget;
    let mut k = 0usize;
    while Instant::now() < end {
        let input = mutate(&seeds[k % seeds.len()], &seeds[(k / seeds.len()) % seeds.len()], &mut rng);
        one(&input);
        k += 1;
    }
    done
}

/// The seed inputs kept for `target` in `fuzz/harness/seeds/TARGET/`.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI's brief run of every target: its seeds, then two seconds of
    /// mutations of them; no input may panic or take over ten seconds.
    #[test]
    fn every_target_survives_its_seeds_and_their_mutations() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "no seeds for {name} in fuzz/harness/seeds/{name}/");
            let s = smoke(*target, &seeds, Duration::from_secs(2), Duration::from_secs(10));
            eprintln!("{name}: {} runs, slowest {:?}", s.runs, s.slowest);
            assert!(s.runs > seeds.len() as u64, "{name}: no mutation ran");
        }
    }

    #[test]
    fn the_nnef_round_trip_takes_the_names_tract_could_not_read_back() {
        // an apostrophe and a newline in a property, CJK names
        nnef_round_trip("入力\u{1}日本\u{1}出力\u{1}note\u{1}it's \"q\" \\ b\nc".as_bytes());
        // the fuzz target's first find: a node named like an NNEF literal
        nnef_round_trip(b"relu\x01true\x01iz");
        nnef_round_trip(b"false\x01graph\x01version");
    }

    #[test]
    fn mutations_are_deterministic_and_vary() {
        let (mut a, mut b) = (1u64, 1u64);
        let x: Vec<_> = (0..20).map(|_| mutate(b"hello world", b"other", &mut a)).collect();
        let y: Vec<_> = (0..20).map(|_| mutate(b"hello world", b"other", &mut b)).collect();
        assert_eq!(x, y);
        assert!(x.iter().collect::<std::collections::HashSet<_>>().len() > 10);
    }
}
