//! The bundle reader: container, manifest, signature framing.
//! The body is `neoc_fuzz_harness::bundle_reader` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::bundle_reader(data));
