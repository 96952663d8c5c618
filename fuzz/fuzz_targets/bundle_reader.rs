//! The bundle reader on arbitrary bytes: the container (canonical tar),
//! the manifest and the signature framing, with unsigned bundles allowed so
//! the digest and manifest checks are reached. It must return Ok or an
//! error, never panic, hang or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neoc_bundle::container::{read_from, Trust};

fuzz_target!(|data: &[u8]| {
    let _ = read_from(data, data.len() as u64, &Trust::KeysOrUnsigned(Vec::new()));
    let _ = neoc_bundle::manifest::Manifest::from_bytes(data);
});
