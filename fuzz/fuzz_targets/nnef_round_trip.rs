//! The NNEF writer -> reader round trip for arbitrary names and properties.
//! The body is `neoc_fuzz_harness::nnef_round_trip` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::nnef_round_trip(data));
