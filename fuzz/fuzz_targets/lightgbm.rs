//! LightGBM's text model format.
//! The body is `neoc_fuzz_harness::lightgbm` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::lightgbm(data));
