//! Open Inference Protocol v2 infer requests, JSON and binary.
//! The body is `neoc_fuzz_harness::oip_request` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::oip_request(data));
