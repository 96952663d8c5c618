//! The ONNX coverage pre-flight and value_info rewrites.
//! The body is `neoc_fuzz_harness::onnx_preflight` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::onnx_preflight(data));
