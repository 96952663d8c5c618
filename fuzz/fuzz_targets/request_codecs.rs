//! The request parsers: CSV, JSON, JSON Lines, .npy.
//! The body is `neoc_fuzz_harness::request_codecs` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::request_codecs(data));
